// emu.h: run dlcore's CUDA kernels on the CPU, for the tests only (see fake_cupy.py beside this file).
//
// g++ compiles a .cu file with `-include emu.h -DDL_EMU`. Every CUDA thread of a block becomes a fiber (its own
// stack, switched by a few lines of x86-64 assembly), and the fibers of a block run cooperatively on one OS
// thread: __syncthreads() parks a fiber until every fiber of the block has arrived, and warp shuffles and
// ballots exchange values through a per-warp slot array between two warp-wide barrier phases. A barrier that
// some thread never reaches is reported as a deadlock (abort with a message) instead of passing silently.
// Blocks are spread over one OS thread per core; `__shared__` maps to `static thread_local`, so each OS
// thread's block has its own shared memory. Dynamic shared memory is filled with 0xFF bytes (NaN for every
// float type) before each block, so reading a slot that was never written shows up as NaN.
//
// This checks the kernels' arithmetic, indexing, masking and synchronisation; it cannot check timing,
// memory coalescing, or behaviour that depends on the GPU's scheduling.
#pragma once
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#if !defined(__x86_64__)
#error "the dlcore CUDA emulator's fiber switch is written for x86-64"
#endif

#ifndef DL_EMU
#define DL_EMU 1
#endif

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

// Save the callee-saved registers on the current stack, store its pointer in *from, load `to` and return
// into whatever that stack was switched away from (System V x86-64 ABI).
extern "C" void dlemu_switch(void** from, void* to);
asm(R"(
    .text
    .p2align 4
    .type dlemu_switch, @function
dlemu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size dlemu_switch, .-dlemu_switch
)");

namespace dlemu {
constexpr size_t kStack = 128 * 1024;

struct Barrier {
    unsigned n = 0, count = 0;
    unsigned long long gen = 0;
};
struct Fiber {
    void* sp = nullptr;
    std::unique_ptr<char[]> stack;
    bool done = false;
};
struct Worker {  // one OS thread, running one block at a time
    std::vector<Fiber> fibers;
    void* sched_sp = nullptr;
    unsigned cur = 0;
    bool progress = false;
    Barrier block_bar;
    std::vector<Barrier> warp_bars;
    std::vector<uint64_t> slots;  // 32 per warp
    std::vector<uint64_t> smem;   // dynamic shared memory (8-byte aligned)
    const std::function<void()>* body = nullptr;
};
inline dim3 g_grid, g_block;
inline thread_local Worker* t_worker = nullptr;
inline thread_local dim3 t_tid, t_bid;
inline thread_local unsigned t_lin = 0;

inline unsigned my_lane() { return t_lin & 31; }

inline void yield() {
    Worker& w = *t_worker;
    dlemu_switch(&w.fibers[w.cur].sp, w.sched_sp);
}

inline void barrier_wait(Barrier& b) {
    t_worker->progress = true;
    const unsigned long long g = b.gen;
    if (++b.count == b.n) {
        b.count = 0;
        ++b.gen;
        return;
    }
    while (b.gen == g) yield();
}

inline void warp_barrier() { barrier_wait(t_worker->warp_bars[t_lin >> 5]); }

template <typename T>
T exchange(T v, int src) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    uint64_t* slot = t_worker->slots.data() + 32 * (t_lin >> 5);
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    slot[my_lane()] = bits;
    warp_barrier();
    T r;
    const uint64_t got = slot[src & 31];
    memcpy(&r, &got, sizeof(T));
    warp_barrier();
    return r;
}

[[noreturn]] inline void fiber_entry() {
    Worker& w = *t_worker;
    (*w.body)();
    w.fibers[w.cur].done = true;
    w.progress = true;
    void* dead;
    dlemu_switch(&dead, w.sched_sp);
    __builtin_unreachable();
}

inline void run_block(Worker& w, unsigned long long b) {
    const unsigned n = g_block.x * g_block.y * g_block.z;
    t_bid = dim3{(unsigned)(b % g_grid.x), (unsigned)((b / g_grid.x) % g_grid.y),
                 (unsigned)(b / ((unsigned long long)g_grid.x * g_grid.y))};
    memset(w.smem.data(), 0xff, w.smem.size() * 8);
    w.block_bar = Barrier{n, 0, 0};
    for (unsigned k = 0; k * 32 < n; ++k) w.warp_bars[k] = Barrier{std::min<unsigned>(32, n - k * 32), 0, 0};
    for (unsigned t = 0; t < n; ++t) {
        Fiber& f = w.fibers[t];
        f.done = false;
        uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack.get()) + kStack) & ~uintptr_t(15);
        void** sp = reinterpret_cast<void**>(top);
        *--sp = nullptr;                                       // fake return address of fiber_entry
        *--sp = reinterpret_cast<void*>(&fiber_entry);         // popped by `ret`
        for (int r = 0; r < 6; ++r) *--sp = nullptr;           // rbp rbx r12 r13 r14 r15
        f.sp = sp;
    }
    unsigned remaining = n;
    while (remaining) {
        bool progressed = false;
        for (unsigned t = 0; t < n; ++t) {
            if (w.fibers[t].done) continue;
            w.cur = t;
            t_lin = t;
            t_tid = dim3{t % g_block.x, (t / g_block.x) % g_block.y, t / (g_block.x * g_block.y)};
            w.progress = false;
            dlemu_switch(&w.sched_sp, w.fibers[t].sp);
            if (w.progress) progressed = true;
            if (w.fibers[t].done) --remaining;
        }
        if (!progressed && remaining) {
            fprintf(stderr, "dlemu: deadlock in block (%u,%u,%u): %u threads wait at a barrier that the others "
                    "never reach\n", t_bid.x, t_bid.y, t_bid.z, remaining);
            abort();
        }
    }
}

template <class F>
void launch(dim3 grid, dim3 block, size_t smem_bytes, F&& body_fn) {
    g_grid = grid;
    g_block = block;
    const std::function<void()> body(body_fn);
    const unsigned n = block.x * block.y * block.z;
    const unsigned long long nblocks = (unsigned long long)grid.x * grid.y * grid.z;
    const unsigned nworkers = (unsigned)std::max<unsigned long long>(
        1, std::min<unsigned long long>(nblocks, std::max(1u, std::thread::hardware_concurrency())));
    auto work = [&](unsigned wi) {
        Worker w;
        w.fibers.resize(n);
        for (auto& f : w.fibers) f.stack.reset(new char[kStack]);
        w.warp_bars.resize((n + 31) / 32);
        w.slots.assign(32 * ((n + 31) / 32), 0);
        w.smem.resize(smem_bytes / 8 + 2);
        w.body = &body;
        t_worker = &w;
        for (unsigned long long b = wi; b < nblocks; b += nworkers) run_block(w, b);
        t_worker = nullptr;
    };
    std::vector<std::thread> threads;
    for (unsigned wi = 1; wi < nworkers; ++wi) threads.emplace_back(work, wi);
    work(0);
    for (auto& th : threads) th.join();
}

// Call a kernel with its arguments unpacked from an array of pointers to each value (CUDA's convention).
template <typename... A, size_t... I>
void call_impl(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}
template <typename... A>
void call(void (*f)(A...), void** args) {
    call_impl(f, args, std::index_sequence_for<A...>{});
}

// Describe each parameter: kind 0 integer, 1 floating, 2 pointer, 3 bool; size; pointee kind and size.
template <typename T>
void describe_one(int* out) {
    using U = std::remove_cv_t<T>;
    if constexpr (std::is_pointer_v<U>) {
        using P = std::remove_cv_t<std::remove_pointer_t<U>>;
        out[0] = 2;
        out[1] = sizeof(U);
        out[2] = std::is_same_v<P, bool> ? 3 : std::is_floating_point_v<P> ? 1 : 0;
        out[3] = std::is_void_v<P> ? 0 : (int)sizeof(std::conditional_t<std::is_void_v<P>, char, P>);
        out[4] = std::is_const_v<std::remove_pointer_t<U>> ? 1 : 0;
    } else {
        out[0] = std::is_same_v<U, bool> ? 3 : std::is_floating_point_v<U> ? 1 : 0;
        out[1] = sizeof(U);
        out[2] = out[3] = out[4] = 0;
    }
}
template <typename... A>
int describe(void (*)(A...), int* out) {
    int i = 0;
    ((describe_one<A>(out + 5 * i), ++i), ...);
    return i;
}
}  // namespace dlemu

// ---- the CUDA names the kernels use -------------------------------------------------------------------
#define threadIdx (dlemu::t_tid)
#define blockIdx (dlemu::t_bid)
#define blockDim (dlemu::g_block)
#define gridDim (dlemu::g_grid)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static thread_local
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define DL_DYNAMIC_SMEM(type, name) type* name = reinterpret_cast<type*>(dlemu::t_worker->smem.data())

inline void __syncthreads() { dlemu::barrier_wait(dlemu::t_worker->block_bar); }
inline void __syncwarp(unsigned = 0xffffffffu) { dlemu::warp_barrier(); }
template <typename T>
T __shfl_xor_sync(unsigned, T v, int m, int = 32) { return dlemu::exchange(v, (int)dlemu::my_lane() ^ m); }
template <typename T>
T __shfl_sync(unsigned, T v, int src, int = 32) { return dlemu::exchange(v, src); }
template <typename T>
T __shfl_down_sync(unsigned, T v, unsigned d, int = 32) {
    const unsigned l = dlemu::my_lane();
    return dlemu::exchange(v, (int)(l + d < 32 ? l + d : l));
}
inline unsigned __ballot_sync(unsigned, int pred) {
    uint64_t* slot = dlemu::t_worker->slots.data() + 32 * (dlemu::t_lin >> 5);
    slot[dlemu::my_lane()] = pred ? 1 : 0;
    dlemu::warp_barrier();
    unsigned r = 0;
    for (int l = 0; l < 32; ++l) r |= (unsigned)(slot[l] & 1u) << l;  // dlcore launches whole warps only
    dlemu::warp_barrier();
    return r;
}
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
inline double __longlong_as_double(long long i) { double d; memcpy(&d, &i, 8); return d; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }

inline float dl_emu_half_to_float(unsigned short h) { _Float16 v; memcpy(&v, &h, 2); return (float)v; }
inline unsigned short dl_emu_float_to_half(float f) {
    _Float16 v = (_Float16)f;
    unsigned short h;
    memcpy(&h, &v, 2);
    return h;
}
