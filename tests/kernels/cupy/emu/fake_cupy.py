"""A stand-in for CuPy built on NumPy and the CPU emulator in emu.h, so the CuPy backend's GPU tests can run
on a machine without a GPU (``DLCORE_CUPY_EMULATE=1 pytest tests/kernels/cupy``; needs g++ >= 12).

* ``RawModule`` / ``RawKernel``: the CUDA source is compiled by g++ with ``-include emu.h`` into a shared
  library; a launch runs every block's threads as real threads (see emu.h). Arguments are checked against the
  kernel's C++ signature the way the GPU would silently not: an array for each pointer with a matching element
  size and kind, a NumPy scalar of exactly the parameter's size and kind for each value (CuPy passes a NumPy
  scalar's bytes as they are, so ``np.float64`` into a ``float`` parameter is garbage on a GPU), a writable
  C-contiguous array behind every non-const pointer, a non-empty grid, at most 1024 threads per block, and
  dynamic shared memory over 48 KiB only after ``max_dynamic_shared_size_bytes`` was raised.
* ``ElementwiseKernel``: the body is compiled into a host loop over ``i`` with the same parameter binding as
  CuPy's (inputs by value, outputs by reference, ``raw`` arrays indexed by hand).
* Everything else (``empty``, ``matmul``, ``asarray``...) is NumPy: arrays are ``numpy.ndarray``.

What it cannot show: speed, coalescing, NVRTC-only compile errors (the nvcc compile test covers those), and
differences between CUDA's and glibc's math functions (both are correctly rounded to within an ulp or two).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import types

import numpy as np
from dlcore.kernels.cupy._source import parse_params  # CuPy's parameter-list grammar, as the backend reads it

HERE = os.path.dirname(os.path.abspath(__file__))
EMU_H = os.path.join(HERE, "emu.h")
_BUILD_DIR = os.path.join(tempfile.gettempdir(), f"dlcore_cupy_emu_{os.getuid()}")
_LOCK = threading.Lock()

_KERNEL_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(')

# NumPy dtype name -> the C type CuPy's generated code uses for it
CTYPES = {
    "float16": "float16", "float32": "float", "float64": "double", "bool": "bool",
    "int8": "signed char", "int16": "short", "int32": "int", "int64": "long long",
    "uint8": "unsigned char", "uint16": "unsigned short", "uint32": "unsigned int", "uint64": "unsigned long long",
}


def available() -> bool:
    """True when g++ can build the emulator (C++20 <barrier> and _Float16 need GCC 12 or newer)."""
    return shutil.which("g++") is not None


def _compile(code: str, defines: list[str]) -> ctypes.CDLL:
    with open(EMU_H, encoding="utf-8") as f:
        emu = f.read()
    key = hashlib.sha256("\0".join([code, emu, *defines]).encode()).hexdigest()[:24]
    os.makedirs(_BUILD_DIR, exist_ok=True)
    so = os.path.join(_BUILD_DIR, f"k_{key}.so")
    with _LOCK:
        if not os.path.exists(so):
            src = os.path.join(_BUILD_DIR, f"k_{key}.cpp")
            with open(src, "w", encoding="utf-8") as f:
                f.write(code)
            tmp = so + f".{os.getpid()}.tmp"
            cmd = ["g++", "-std=c++20", "-O1", "-g", "-shared", "-fPIC", "-pthread", "-DDL_EMU",
                   "-include", EMU_H, *defines, "-o", tmp, src]
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise RuntimeError(f"emulator build failed ({' '.join(cmd)}):\n{res.stderr[-6000:]}")
            os.replace(tmp, so)
        return ctypes.CDLL(so)


# ---- RawModule / RawKernel ----------------------------------------------------------------------------
class RawModule:
    """``cupy.RawModule(code=..., options=...)`` compiled for the CPU emulator on first use."""

    def __init__(self, code=None, *, path=None, options=(), backend="nvrtc", name_expressions=None, **kwargs):
        if code is None:
            raise NotImplementedError("the emulator compiles source code only")
        self.code = code
        self.options = tuple(options)
        self._lib = None
        self.names = _KERNEL_RE.findall(code)

    def _library(self):
        if self._lib is None:
            defines = [o for o in self.options if o.startswith("-D")]
            unknown = [o for o in self.options if not (o.startswith(("-D", "--std=", "-std=")))]
            if unknown:
                raise ValueError(f"emulator: unexpected NVRTC options {unknown}")
            tramp = []
            for n in self.names:
                tramp.append(
                    f'extern "C" void dlemu_launch__{n}(const unsigned* d, unsigned long long smem, void** a) '
                    f"{{ dlemu::launch(dim3{{d[0], d[1], d[2]}}, dim3{{d[3], d[4], d[5]}}, smem, "
                    f"[&] {{ dlemu::call({n}, a); }}); }}\n"
                    f'extern "C" int dlemu_describe__{n}(int* out) {{ return dlemu::describe({n}, out); }}\n')
            self._lib = _compile(self.code + "\n" + "".join(tramp), defines)
        return self._lib

    def get_function(self, name):
        if name not in self.names:
            raise KeyError(f"emulator: no extern \"C\" __global__ kernel named {name!r}")
        return RawKernel(module=self, name=name)


def _dims(d, what):
    d = (d,) if isinstance(d, (int, np.integer)) else tuple(d)
    if not 1 <= len(d) <= 3 or not all(isinstance(v, (int, np.integer)) for v in d):
        raise TypeError(f"{what} must be an int or a tuple of 1-3 ints, got {d!r}")
    return tuple(int(v) for v in d) + (1,) * (3 - len(d))


class RawKernel:
    """One kernel of a ``RawModule``; called as ``kernel(grid, block, args, shared_mem=0)``."""

    def __init__(self, code=None, name=None, options=(), *, module=None, **kwargs):
        self._module = module if module is not None else RawModule(code=code, options=options)
        self.name = name
        self.max_dynamic_shared_size_bytes = 0
        self._desc = None

    def _describe(self, lib):
        if self._desc is None:
            out = (ctypes.c_int * (5 * 64))()
            n = getattr(lib, f"dlemu_describe__{self.name}")(out)
            self._desc = [tuple(out[5 * i: 5 * i + 5]) for i in range(n)]
        return self._desc

    def __call__(self, grid, block, args, *, shared_mem=0, **kwargs):
        lib = self._module._library()
        desc = self._describe(lib)
        g, b = _dims(grid, "grid"), _dims(block, "block")
        if min(g) < 1 or g[0] > 2**31 - 1 or g[1] > 65535 or g[2] > 65535:
            raise ValueError(f"{self.name}: invalid grid {g} (CUDA rejects an empty or oversized grid)")
        if min(b) < 1 or b[0] * b[1] * b[2] > 1024 or b[2] > 64:
            raise ValueError(f"{self.name}: invalid block {b}")
        if shared_mem > 48 * 1024 and shared_mem > self.max_dynamic_shared_size_bytes:
            raise ValueError(f"{self.name}: {shared_mem} bytes of dynamic shared memory without raising "
                             "max_dynamic_shared_size_bytes")
        if shared_mem > 227 * 1024:
            raise ValueError(f"{self.name}: {shared_mem} bytes of shared memory exceed the H100's 227 KiB")
        args = tuple(args)
        if len(args) != len(desc):
            raise TypeError(f"{self.name}: takes {len(desc)} arguments, got {len(args)}")
        holders = []
        for i, (a, (kind, size, pkind, psize, pconst)) in enumerate(zip(args, desc)):
            where = f"{self.name} argument {i}"
            if kind == 2:
                if not isinstance(a, np.ndarray):
                    raise TypeError(f"{where}: expects an array (pointer), got {type(a).__name__}")
                dk = a.dtype.kind
                ok_kind = {"f": 1, "i": 0, "u": 0, "b": 0}.get(dk)
                if a.dtype == np.float16:  # raw half bits: the kernel's dl_t is unsigned short
                    ok = psize == 2
                elif dk == "b":
                    ok = psize == 1 and pkind in (0, 3)
                else:
                    ok = psize == a.itemsize and pkind == ok_kind
                if not ok:
                    raise TypeError(f"{where}: {a.dtype} array passed for a pointer to a "
                                    f"{psize}-byte {'floating' if pkind == 1 else 'integer'} type")
                if not pconst and a.size and not (a.flags.c_contiguous and a.flags.writeable):
                    raise ValueError(f"{where}: output array must be writable and C-contiguous")
                holders.append(ctypes.c_void_p(a.ctypes.data))
            else:
                if not isinstance(a, (np.generic,)):
                    raise TypeError(f"{where}: pass a NumPy scalar (np.int64, np.float32...), not "
                                    f"{type(a).__name__} (CuPy would choose its width for you)")
                want = {0: "iu", 1: "f", 3: "b"}[kind]
                if a.dtype.kind not in want or a.dtype.itemsize != size:
                    raise TypeError(f"{where}: {a.dtype} scalar passed for a {size}-byte "
                                    f"{ {0: 'integer', 1: 'floating', 3: 'bool'}[kind]} parameter")
                holders.append(ctypes.create_string_buffer(a.tobytes(), size))
        ptrs = (ctypes.c_void_p * max(1, len(holders)))(*[ctypes.addressof(h) for h in holders])
        dims = (ctypes.c_uint * 6)(*g, *b)
        fn = getattr(lib, f"dlemu_launch__{self.name}")
        fn.argtypes = [ctypes.c_void_p, ctypes.c_ulonglong, ctypes.c_void_p]
        fn.restype = None
        fn(dims, int(shared_mem), ptrs)


# ---- ElementwiseKernel ----------------------------------------------------------------------------------
def elementwise_source(in_params: str, out_params: str, operation: str, preamble: str, typemap: dict,
                       target: str, name: str = "dlemu_elementwise", extern_c: bool = True) -> str:
    """C++ for an ElementwiseKernel body: a host loop (``target='host'``) or a ``__global__`` (``'cuda'``).

    Args:
        typemap: type placeholder -> C type, e.g. ``{'T': 'float'}``.
        extern_c: give the ``__global__`` C linkage (off to wrap several kernels in namespaces).
    """
    ins, outs = parse_params(in_params), parse_params(out_params)

    def ctype(t):
        return typemap[t] if t in typemap else CTYPES[t]

    lines = [f"typedef {c} {t};" for t, c in typemap.items()]
    lines.append(preamble)
    params = []
    for k, (raw, t, n) in enumerate(ins + outs):
        is_out = k >= len(ins)
        params.append((raw, t, n, is_out, ctype(t)))
    if target == "host":
        body = ["extern \"C\" void dlemu_elementwise(long long _n, void** _a, const unsigned char* _is_array) {"]
        for k, (raw, t, n, is_out, c) in enumerate(params):
            if raw:
                body.append(f"  {'' if is_out else 'const '}{c}* const {n} = ({'' if is_out else 'const '}{c}*)_a[{k}];")
        body.append("  for (long long i = 0; i < _n; ++i) {")
        for k, (raw, t, n, is_out, c) in enumerate(params):
            if raw:
                continue
            if is_out:
                body.append(f"    {c}& {n} = (({c}*)_a[{k}])[i];")
            else:
                body.append(f"    const {c} {n} = _is_array[{k}] ? ((const {c}*)_a[{k}])[i] : *(const {c}*)_a[{k}];")
        body.append("    {\n" + operation + "\n    }")
        body.append("  }\n}")
    else:
        sig = ["long long _n"]
        for raw, t, n, is_out, c in params:
            sig.append(f"{'' if is_out else 'const '}{c}* _p_{n}")
        linkage = 'extern "C" ' if extern_c else ""
        body = [f"{linkage}__global__ void {name}({', '.join(sig)}) {{",
                "  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;",
                "  if (i >= _n) return;"]
        for raw, t, n, is_out, c in params:
            if raw:
                body.append(f"  {'' if is_out else 'const '}{c}* const {n} = _p_{n};")
            elif is_out:
                body.append(f"  {c}& {n} = _p_{n}[i];")
            else:
                body.append(f"  const {c} {n} = _p_{n}[i];")
        body.append("  {\n" + operation + "\n  }\n}")
    return "\n".join(lines + body) + "\n"


class ElementwiseKernel:
    """``cupy.ElementwiseKernel`` for NumPy arrays, compiled to a host loop per set of placeholder types."""

    def __init__(self, in_params, out_params, operation, name="kernel", reduce_dims=True, preamble="", **kwargs):
        self.in_params, self.out_params = in_params, out_params
        self.operation, self.name, self.preamble = operation, name, preamble
        self.ins, self.outs = parse_params(in_params), parse_params(out_params)
        for _, _, n in self.ins + self.outs:
            if n in ("i", "n") or n.startswith("_"):
                raise ValueError(f"{name}: parameter name {n!r} is reserved by CuPy")
        self._libs = {}

    def __call__(self, *args, size=None, **kwargs):
        n_in, n_out = len(self.ins), len(self.outs)
        if len(args) not in (n_in, n_in + n_out):
            raise TypeError(f"{self.name}: wrong number of arguments ({len(args)})")
        args = list(args) + [None] * (n_in + n_out - len(args))
        params = self.ins + self.outs
        types_ = {}
        for (raw, t, n), a in zip(params, args):  # placeholders: from arrays and NumPy scalars
            if t in CTYPES or a is None:
                continue
            if isinstance(a, (np.ndarray, np.generic)):
                if t in types_ and types_[t] != a.dtype and isinstance(a, np.ndarray):
                    raise TypeError(f"{self.name}: placeholder {t} bound to {types_[t]} and {a.dtype}")
                types_.setdefault(t, a.dtype)
        for raw, t, n in params:
            if t not in CTYPES and t not in types_:
                raise TypeError(f"{self.name}: cannot resolve type placeholder {t}")
        shapes = [a.shape for (raw, t, n), a in zip(params, args) if isinstance(a, np.ndarray) and not raw]
        shape = np.broadcast_shapes(*shapes) if shapes else ()
        if size is not None:
            shape = (int(size),)
        count = int(np.prod(shape)) if shape else 1
        bound, results, copy_back, is_array = [], [], [], []
        for k, ((raw, t, n), a) in enumerate(zip(params, args)):
            dt = np.dtype(types_[t]) if t in types_ else np.dtype(t)
            is_out = k >= n_in
            if is_out and a is None:
                if raw:
                    raise TypeError(f"{self.name}: raw output {n} must be given")
                a = np.empty(shape, dt)
            if is_out:
                if a.dtype != dt:
                    raise TypeError(f"{self.name}: output {n} is {a.dtype}, expected {dt}")
                if not raw and a.shape != shape:
                    raise ValueError(f"{self.name}: output {n} has shape {a.shape}, expected {shape}")
                work = a if a.flags.c_contiguous and a.flags.writeable else np.ascontiguousarray(a)
                if work is not a:
                    copy_back.append((a, work))
                results.append(a)
                bound.append(work)
                is_array.append(1)
            elif isinstance(a, np.ndarray):
                if a.dtype != dt:
                    raise TypeError(f"{self.name}: input {n} is {a.dtype}, expected {dt}")
                if not raw and a.size == 1 and count != 1:  # a broadcast scalar array: bind its one value
                    bound.append(np.ascontiguousarray(a.reshape(1)))
                    is_array.append(0)
                else:
                    bound.append(np.ascontiguousarray(a if raw else np.broadcast_to(a, shape)))
                    is_array.append(1)
            else:
                if raw:
                    raise TypeError(f"{self.name}: raw argument {n} must be an array")
                bound.append(np.asarray(a, dtype=dt).reshape(1))
                is_array.append(0)
        key = tuple(sorted((t, str(d)) for t, d in types_.items()))
        lib = self._libs.get(key)
        if lib is None:
            typemap = {t: CTYPES[np.dtype(d).name] for t, d in types_.items()}
            code = "typedef _Float16 float16;\n" + elementwise_source(
                self.in_params, self.out_params, self.operation, self.preamble, typemap, "host")
            lib = self._libs[key] = _compile(code, [])
        ptrs = (ctypes.c_void_p * len(bound))(*[b.ctypes.data for b in bound])
        flags = (ctypes.c_ubyte * len(bound))(*is_array)
        fn = lib.dlemu_elementwise
        fn.argtypes = [ctypes.c_longlong, ctypes.c_void_p, ctypes.c_void_p]
        fn.restype = None
        if count:
            fn(count, ptrs, flags)
        for orig, work in copy_back:
            orig[...] = work
        return results[0] if len(results) == 1 else tuple(results)


# ---- the module ---------------------------------------------------------------------------------------
class _Device:
    def __init__(self, id=0):
        self.id = id
        self.attributes = {"MaxSharedMemoryPerBlockOptin": 227 * 1024, "MultiProcessorCount": 132}
        self.compute_capability = "90"

    def synchronize(self):
        pass


def make_module() -> types.ModuleType:
    """A module object to install as ``sys.modules['cupy']``: NumPy plus the emulated kernel classes."""
    mod = types.ModuleType("cupy")
    mod.__dict__.update(
        RawModule=RawModule, RawKernel=RawKernel, ElementwiseKernel=ElementwiseKernel, ndarray=np.ndarray,
        asnumpy=lambda a, *args, **kw: np.asarray(a), __dlcore_emulated__=True,
    )
    runtime = types.SimpleNamespace(
        getDeviceCount=lambda: 1,
        getDeviceProperties=lambda i: {"sharedMemPerBlockOptin": 227 * 1024, "name": b"dlcore CPU emulator"},
    )
    mod.cuda = types.SimpleNamespace(Device=_Device, runtime=runtime, Stream=None)

    def __getattr__(name):
        return getattr(np, name)

    mod.__getattr__ = __getattr__
    return mod
