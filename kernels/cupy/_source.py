"""Load the CuPy backend's CUDA code: RawModules from ``cuda/*.cu`` and ElementwiseKernels described as data.

Every ``.cu`` file is compiled by NVRTC once per (file, dtype) on first use, with ``-DDL_DTYPE_<DTYPE>``
selecting the storage and accumulation types of ``cuda/common.cuh`` (float16 accumulates in float32). The
``#include "common.cuh"`` line is replaced by the header's text, so NVRTC gets one self-contained string
and needs no include path. CuPy itself is imported inside functions: importing any ``kernels.cupy`` module
costs nothing until a kernel runs, and the tests can read the kernel sources without a GPU.
"""
from __future__ import annotations

import functools
import os
import re

import numpy as np

CUDA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda")

# dtype name -> the macro that selects it in common.cuh
DTYPE_MACROS = {"float32": "DL_DTYPE_FLOAT32", "float64": "DL_DTYPE_FLOAT64", "float16": "DL_DTYPE_FLOAT16"}
# dtype name -> the dtype sums are accumulated (and partial results stored) in
ACC_DTYPES = {"float32": "float32", "float64": "float64", "float16": "float32"}

# Upper bound on the blocks of a grid-stride launch: enough to fill any current GPU many times over.
MAX_GRID = 1 << 20

_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.MULTILINE)
_PRAGMA_ONCE = re.compile(r'^[ \t]*#[ \t]*pragma[ \t]+once[ \t]*$', re.MULTILINE)


def cupy():
    """Import CuPy on first use (kernels.cupy modules import without it)."""
    import cupy

    return cupy


def check_float(*arrays) -> str:
    """Return the dtype name shared by ``arrays`` (None entries skipped); TypeError unless it is supported.

    Args:
        *arrays: CuPy arrays, or None.

    Returns:
        ``'float32'``, ``'float64'`` or ``'float16'``.

    Raises:
        TypeError: the arrays differ in dtype, or their dtype has no kernel (CuPy has no bfloat16).
    """
    name = None
    for a in arrays:
        if a is None:
            continue
        dt = np.dtype(a.dtype).name
        if dt not in DTYPE_MACROS:
            raise TypeError(f"cupy backend: unsupported dtype {dt} (float32, float64 or float16)")
        if name is None:
            name = dt
        elif dt != name:
            raise TypeError(f"cupy backend: mixed dtypes {name} and {dt}")
    if name is None:
        raise TypeError("cupy backend: no floating array given")
    return name


def acc_dtype(dtype: str) -> np.dtype:
    """The accumulation dtype for ``dtype`` (float32 for float16)."""
    return np.dtype(ACC_DTYPES[dtype])


def acc_scalar(dtype: str, value):
    """``value`` as a NumPy scalar of the accumulation type: what a ``dl_acc`` kernel parameter expects."""
    return acc_dtype(dtype).type(value)


def i64(value) -> np.int64:
    """``value`` as the ``long long`` a kernel parameter expects (RawKernel arguments must be NumPy scalars)."""
    return np.int64(value)


def i32(value) -> np.int32:
    """``value`` as the ``int`` a kernel parameter expects."""
    return np.int32(value)


def threads_for(n: int, per_thread: int = 4, lo: int = 32, hi: int = 1024) -> int:
    """Threads per block for a row of ``n`` elements: a power of two in [lo, hi], ~``per_thread`` each."""
    want = max(1, -(-int(n) // per_thread))
    t = lo
    while t < want and t < hi:
        t *= 2
    return t


def grid(n_blocks: int) -> int:
    """A 1-D grid for a grid-stride loop over ``n_blocks`` work items (callers skip empty launches)."""
    return int(max(1, min(int(n_blocks), MAX_GRID)))


def source(*filenames: str) -> str:
    """The text of ``cuda/<name>`` for each name, each ``#include "x"`` replaced by ``cuda/x``, every file once."""
    seen: set[str] = set()

    def expand(name: str) -> str:
        if name in seen:
            return ""
        seen.add(name)
        with open(os.path.join(CUDA_DIR, name), encoding="utf-8") as f:
            text = _PRAGMA_ONCE.sub("", f.read())  # pasted inline, each header appears once anyway
        return _INCLUDE.sub(lambda m: expand(m.group(1)), text)

    return "".join(expand(name) for name in filenames)


@functools.cache
def module(filename: str, dtype: str):
    """The ``cupy.RawModule`` for ``cuda/<filename>`` compiled for ``dtype`` (cached; NVRTC runs lazily)."""
    cp = cupy()
    return cp.RawModule(code=source(filename), options=("--std=c++17", "-D" + DTYPE_MACROS[dtype]))


@functools.cache
def function(filename: str, name: str, dtype: str):
    """The kernel ``name`` of ``cuda/<filename>`` for ``dtype``, as a ``cupy.RawKernel`` (cached)."""
    return module(filename, dtype).get_function(name)


def max_shared_bytes() -> int:
    """The most dynamic shared memory one block may opt into on the current device (48 KiB if unknown)."""
    cp = cupy()
    try:
        return int(cp.cuda.Device().attributes["MaxSharedMemoryPerBlockOptin"])
    except Exception:  # noqa: BLE001  (the attribute name differs across CuPy versions: try the next)
        try:
            props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
            return int(props["sharedMemPerBlockOptin"])
        except Exception:  # noqa: BLE001  (no way to ask: assume the portable limit)
            return 48 * 1024


def launch_with_smem(kernel, grid_dims, block_dims, args, smem: int) -> None:
    """Launch ``kernel`` with ``smem`` bytes of dynamic shared memory, opting in above 48 KiB.

    Raises:
        ValueError: the device cannot give one block that much shared memory.
    """
    if smem > 48 * 1024:
        limit = max_shared_bytes()
        if smem > limit:
            raise ValueError(f"cupy backend: this shape needs {smem} bytes of shared memory per block; "
                             f"the device allows {limit}")
        if getattr(kernel, "max_dynamic_shared_size_bytes", 0) < smem:
            kernel.max_dynamic_shared_size_bytes = smem
    kernel(grid_dims, block_dims, args, shared_mem=smem)


def finish_sum(part, count: int, divisor, dtype: str):
    """Fold ``count`` partial sums (dl_acc) in a fixed order and divide: the 2nd stage of a loss reduction.

    Args:
        part: 1-D CuPy array of partial sums in the accumulation dtype (at least one element).
        count: how many leading entries of ``part`` to add.
        divisor: a Python number, or a ``(1,)`` device array in the accumulation dtype (0 gives NaN for an
            empty mean, as torch).
        dtype: the result's dtype name.

    Returns:
        A 0-d CuPy array of ``dtype``.
    """
    cp = cupy()
    acc = acc_dtype(dtype)
    if not hasattr(divisor, "shape"):
        divisor = cp.full((1,), divisor, dtype=acc)
    out = cp.empty((), dtype=np.dtype(dtype))
    function("reduce.cu", "dl_sum_partials", dtype)((1,), (256,), (part, i64(count), divisor, out))
    return out


def partial_blocks(n: int, threads: int = 256, per_thread: int = 8, cap: int = 1024) -> int:
    """Blocks for the first stage of a grid-stride reduction over ``n`` elements (at least 1)."""
    return int(max(1, min(cap, -(-int(n) // (threads * per_thread)))))


# Every ElementwiseKernel gets this preamble, then cuda/math.cuh: `dl_acc_of<T>::type` is the type to compute
# in (float for CuPy's float16, else T itself), so one body serves float16, float32 and float64, and its
# math goes through math.cuh's explicit float/double overloads (dl_exp, dl_erf, ...).
ACC_PREAMBLE = r"""
template <typename T> struct dl_acc_of { typedef T type; };
template <> struct dl_acc_of<float16> { typedef float type; };
"""


ELEMENTWISE: list[Elementwise] = []  # every spec ever made, for the tests' nvcc compile check


# Threads per block of every ElementwiseKernel launch. CuPy's default, 128, moved 1.69 TB/s on a 256M-float
# copy on an H200 (40% of its 4.27 TB/s); 256 moved 2.62 TB/s, 512 2.39, 1024 2.11 (bench/RESULTS.md). The
# 16-byte twins (Elementwise.vector_source, used for contiguous aligned float32/float64 arrays) reach
# 88-101% of that copy bandwidth at 256 threads (bench/GPU_RESULTS.md, 2026-11-26).
ELEMENTWISE_BLOCK_SIZE = 256


# scalar parameter types an Elementwise spec may use, as C types and as the NumPy scalars a RawKernel takes
_SCALAR_CTYPES = {"float32": "float", "float64": "double", "int32": "int", "int64": "long long", "bool": "bool"}
_SCALAR_NUMPY = {"float32": np.float32, "float64": np.float64, "int32": np.int32, "int64": np.int64,
                 "bool": np.bool_}


def parse_params(spec: str) -> list:
    """CuPy's parameter-list grammar: ``'T x, raw T g, float32 lr'`` -> ``[(raw, type, name), ...]``."""
    out = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        toks = part.split()
        raw = toks[0] == "raw"
        if raw:
            toks = toks[1:]
        if len(toks) != 2:
            raise ValueError(f"bad parameter {part!r}")
        out.append((raw, toks[0], toks[1]))
    return out


def _reads(operation: str, name: str) -> bool:
    """Whether ``operation`` reads ``name`` anywhere (any use that is not ``name = ...``, ``==`` excepted)."""
    uses = re.findall(r"\b" + re.escape(name) + r"\b(\s*=(?!=))?", operation)
    return any(not assign for assign in uses)


def _address(a) -> int:
    """The device address of a CuPy array's first element (a NumPy array's, under the CPU emulator)."""
    data = getattr(a, "data", None)
    ptr = getattr(data, "ptr", None)
    return int(ptr) if ptr is not None else int(a.__array_interface__["data"][0])


class Elementwise:
    """A ``cupy.ElementwiseKernel`` kept as data and built on first call.

    Keeping the parameter lists, body and preamble as plain strings lets the tests compile every body with
    nvcc (wrapped in a generated ``__global__``) on a machine without a GPU or CuPy.

    Args:
        in_params: CuPy's input parameter list, e.g. ``'T x, raw T g, float32 lr'``.
        out_params: the output list, e.g. ``'T y'``; outputs may be read as well as written.
        operation: the loop body, CUDA C++; ``i`` is the element index.
        name: the kernel's name (shown by profilers).
        preamble: extra file-scope code; ``ACC_PREAMBLE`` and ``cuda/math.cuh`` always come first.
        headers: ``cuda/`` headers pasted before ``preamble`` (e.g. ``('losses.cuh',)``).

    Example:
        >>> relu = Elementwise('T x', 'T y', 'y = x < T(0) ? T(0) : x;', 'dl_relu')
        >>> y = relu(x)  # doctest: +SKIP
    """

    def __init__(self, in_params: str, out_params: str, operation: str, name: str, preamble: str = "",
                 headers: tuple = ()):
        self.in_params = in_params
        self.out_params = out_params
        self.operation = operation
        self.name = name
        self.preamble = ACC_PREAMBLE + source("math.cuh", *headers) + preamble
        self.block_size = ELEMENTWISE_BLOCK_SIZE
        self._kernel = None
        self._ins, self._outs = parse_params(in_params), parse_params(out_params)
        self._twins = {}  # C type -> the 16-byte twin's RawKernel, or None when the spec has no twin
        ELEMENTWISE.append(self)

    def kernel(self):
        """The compiled-on-first-use ``cupy.ElementwiseKernel``."""
        if self._kernel is None:
            cp = cupy()
            self._kernel = cp.ElementwiseKernel(self.in_params, self.out_params, self.operation, self.name,
                                                preamble=self.preamble)
        return self._kernel

    def __call__(self, *args, **kwargs):
        if not kwargs:
            done = self._vectorized(args)
            if done is not NotImplemented:
                return done
        if self.block_size is not None and "block_size" not in kwargs:
            kwargs["block_size"] = self.block_size
        return self.kernel()(*args, **kwargs)

    # -- the 16-byte path ---------------------------------------------------------------------------
    def vector_source(self, ctype: str) -> str | None:
        """CUDA C++ of this kernel's 16-byte-access twin for ``T = ctype`` (None when it has ``raw`` params or
        a non-``T`` array): each thread loads 16 bytes of every array at once (4 floats / 2 doubles), runs
        the body once per element in registers, stores 16 bytes; a scalar loop takes the tail.

        An output that the body reads (an in-place update) is loaded first; one it only assigns is not, so
        a pure output costs one write. CuPy's ``ElementwiseKernel`` does one 4- or 8-byte access per element
        per thread, which reached 54-60% of an H200's copy bandwidth (bench/GPU_RESULTS.md).
        """
        ins, outs = self._ins, self._outs
        if any(raw or (t != "T" and t not in _SCALAR_CTYPES) for raw, t, _ in ins + outs):
            return None
        if any(t != "T" for _, t, _ in outs):
            return None
        sig = ["long long _n"]
        for k, (_, t, n) in enumerate(ins + outs):
            if t != "T":
                sig.append(f"const {_SCALAR_CTYPES[t]} {n}")
            else:
                sig.append(f"{'const ' if k < len(ins) else ''}T* _p_{n}")

        def element(indent, src):
            """Bind each array parameter to its element ``src.format(n)`` and run the body (CuPy's binding:
            inputs by value, outputs by reference)."""
            pad = " " * indent
            lines = [f"{pad}const T {n} = {src.format(n)};" for _, t, n in ins if t == "T"]
            lines += [f"{pad}T& {n} = {src.format(n)};" for _, _, n in outs]
            return lines + [pad + "{\n" + self.operation + "\n" + pad + "}"]

        read_outs = {n for _, _, n in outs if _reads(self.operation, n)}
        v = ["  for (long long _v = (long long)blockIdx.x * blockDim.x + threadIdx.x; _v < _nv; _v += _stride) {"]
        for _, t, n in ins:
            if t == "T":
                v.append(f"    const _P _{n} = reinterpret_cast<const _P*>(_p_{n})[_v];")
        for _, _, n in outs:
            v.append(f"    _P _{n}" + (f" = reinterpret_cast<const _P*>(_p_{n})[_v];" if n in read_outs else ";"))
        v.append("#pragma unroll")
        v.append("    for (int _l = 0; _l < _V; ++_l) {")
        v.append("      const long long i = _v * _V + _l;")
        v.append("      (void)i;")
        v += element(6, "_{}.v[_l]")
        v.append("    }")
        for _, _, n in outs:
            v.append(f"    reinterpret_cast<_P*>(_p_{n})[_v] = _{n};")
        v.append("  }")
        v.append("  for (long long i = _nv * _V + (long long)blockIdx.x * blockDim.x + threadIdx.x; i < _n;"
                 " i += _stride) {")
        v += element(4, "_p_{}[i]")
        v.append("  }")
        return "\n".join([
            f"typedef {ctype} T;",
            "struct float16;  // ACC_PREAMBLE names CuPy's half type; this path never instantiates it",
            self.preamble,
            "template <typename E, int V> struct alignas(16) dl_pack16 { E v[V]; };",
            f'extern "C" __global__ void {self.name}_v16({", ".join(sig)}) {{',
            "  constexpr int _V = 16 / sizeof(T);",
            "  typedef dl_pack16<T, _V> _P;",
            "  const long long _stride = (long long)gridDim.x * blockDim.x;",
            "  const long long _nv = _n / _V;",
            *v,
            "}",
        ]) + "\n"

    def _vectorized(self, args):
        """Run the 16-byte twin when every array is a contiguous, 16-byte aligned float32/float64 CuPy array
        of one shape; ``NotImplemented`` otherwise (the ElementwiseKernel then runs, with CuPy's
        broadcasting and casting rules)."""
        ins, outs = self._ins, self._outs
        if len(args) not in (len(ins), len(ins) + len(outs)):
            return NotImplemented
        cp = cupy()
        params = ins + outs
        arrays = [a for a, (_, t, _) in zip(args, params) if t == "T"]
        if not arrays or not all(isinstance(a, cp.ndarray) for a in arrays):
            return NotImplemented
        first = arrays[0]
        dtype = np.dtype(first.dtype)
        if dtype.name not in ("float32", "float64") or any(
                np.dtype(a.dtype) != dtype or a.shape != first.shape or not a.flags.c_contiguous
                or _address(a) % 16 for a in arrays):
            return NotImplemented
        ctype = "float" if dtype.name == "float32" else "double"
        if ctype not in self._twins:  # built once per spec and type (NVRTC compiles on the first launch)
            code = self.vector_source(ctype)
            self._twins[ctype] = None if code is None else cp.RawKernel(code, f"{self.name}_v16",
                                                                        options=("--std=c++17",))
        kernel = self._twins[ctype]
        if kernel is None:
            return NotImplemented
        args = list(args)
        if len(args) == len(ins):  # outputs not given: allocate them, as the ElementwiseKernel would
            args += [cp.empty_like(first) for _ in outs]
            if any(_address(a) % 16 for a in args[len(ins):]):
                return NotImplemented
        n = first.size
        kernel_args = [np.int64(n)]
        for a, (_, t, _) in zip(args, params):
            kernel_args.append(a if t == "T" else _SCALAR_NUMPY[t](a))
        if n:
            blocks = grid(-(-n // (256 * (16 // dtype.itemsize))))
            kernel((blocks,), (256,), tuple(kernel_args))
        result = args[len(ins):]
        return result[0] if len(result) == 1 else tuple(result)
