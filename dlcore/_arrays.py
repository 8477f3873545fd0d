"""What kind of array is this, and how do we move it to a backend's native kind without copying?

Four kinds of array reach dlcore: ``numpy``, ``torch_cpu``, ``torch_cuda`` and ``cupy``. Nothing here
imports torch or cupy: a tensor's type is recognised by its module name, so ``import dlcore`` stays light.

Each backend computes on one *native* kind (numpy for the CPU backends, torch for Triton, cupy for CuPy).
`to_native` / `from_native` move arrays across, zero-copy where the memory allows it (a torch CPU tensor is
viewed as a NumPy array; a torch CUDA tensor reaches CuPy through DLPack), and `namespace` gives the few
array functions the launchers in ``dlcore/ops`` need, spelled the same for every kind.
"""
from __future__ import annotations

import numpy as np

from dlcore import _pool

KINDS = ("numpy", "torch_cpu", "torch_cuda", "cupy")
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
CPU_FLOAT_DTYPES = ("float32", "float64")


def is_torch(a) -> bool:
    return type(a).__module__.startswith("torch") and hasattr(a, "requires_grad")


def is_cupy(a) -> bool:
    return type(a).__module__.startswith("cupy") and hasattr(a, "device")


def is_dlcore_tensor(a) -> bool:
    return getattr(type(a), "_is_dlcore_tensor", False)


def kind_of(a) -> str:
    """The kind of one array; TypeError for anything that is not an array dlcore takes."""
    if isinstance(a, np.ndarray):
        return "numpy"
    if is_torch(a):
        return "torch_cuda" if a.is_cuda else "torch_cpu"
    if is_cupy(a):
        return "cupy"
    if isinstance(a, np.generic):
        return "numpy"
    if is_dlcore_tensor(a):
        return kind_of(a.data)
    raise TypeError(
        f"expected a NumPy array, torch tensor or CuPy array, got {type(a).__module__}.{type(a).__qualname__}"
    )


def common_kind(named_arrays: dict) -> str:
    """The one kind shared by all non-None arrays in ``named_arrays``; TypeError naming the odd one out."""
    kind, first = None, None
    for name, a in named_arrays.items():
        if a is None:
            continue
        k = kind_of(a)
        if kind is None:
            kind, first = k, name
        elif k != kind:
            raise TypeError(
                f"'{name}' is a {_pretty(k)} but '{first}' is a {_pretty(kind)}: pass arrays of one kind "
                "(convert with torch.from_numpy / tensor.numpy() / cupy.asarray first)"
            )
        elif k in ("torch_cuda", "cupy"):
            dev_a, dev_f = _device_index(a), _device_index(named_arrays[first])
            if dev_a != dev_f:
                raise ValueError(f"'{name}' is on device {dev_a} but '{first}' is on device {dev_f}")
    if kind is None:
        raise TypeError("no array argument was given")
    return kind


def _device_index(a):
    if is_dlcore_tensor(a):
        a = a.data
    if is_torch(a):
        return a.device.index
    return a.device.id


def _pretty(kind: str) -> str:
    return {"numpy": "NumPy array", "torch_cpu": "torch CPU tensor", "torch_cuda": "torch CUDA tensor",
            "cupy": "CuPy array"}[kind]


_DTYPE_NAMES: dict = {}


def dtype_name(a) -> str:
    """'float32', 'int64', 'bool', ... for any array kind."""
    if is_dlcore_tensor(a):
        a = a.data
    dt = a.dtype
    name = _DTYPE_NAMES.get(dt)
    if name is None:  # np.dtype.name is a slow property; every op asks several times per call
        name = str(dt).removeprefix("torch.") if is_torch(a) else np.dtype(dt).name
        _DTYPE_NAMES[dt] = name
    return name


def to_native(a, native: str):
    """View ``a`` as the backend's native kind ('numpy', 'torch' or 'cupy'), without copying when possible."""
    if a is None:
        return None
    if is_dlcore_tensor(a):
        a = a.data
    if native == "numpy":
        if isinstance(a, np.ndarray):
            return a
        if is_torch(a):  # a plain view; each call below only when needed (~3.4 -> ~1.3 us per tensor)
            if a.requires_grad:
                a = a.detach()
            if a.is_conj() or a.is_neg():
                a = a.resolve_conj().resolve_neg()
            return a.numpy()
        return np.asarray(a)
    if native == "torch":
        if is_torch(a):
            return a.detach()
        import torch

        if isinstance(a, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(a) if any(s < 0 for s in a.strides) else a)
        return torch.from_dlpack(a)
    if native == "cupy":
        import cupy

        if is_cupy(a):
            return a
        return cupy.from_dlpack(a.detach() if is_torch(a) else a)
    raise ValueError(native)


def from_native(a, kind: str):
    """Turn a backend's output back into the caller's kind (``kind`` as returned by `kind_of`)."""
    if a is None:
        return None
    if kind == "numpy":
        if isinstance(a, np.ndarray):
            return a
        if is_torch(a):
            return a.detach().cpu().numpy()
        return a.get()
    if kind in ("torch_cpu", "torch_cuda"):
        import torch

        if is_torch(a):
            return a
        if isinstance(a, np.ndarray):
            if not a.flags.c_contiguous and min(a.strides, default=0) < 0:  # torch takes no negative strides
                a = np.ascontiguousarray(a)
            return torch.from_numpy(a)
        return torch.from_dlpack(a)
    if kind == "cupy":
        import cupy

        return a if is_cupy(a) else cupy.from_dlpack(a)
    raise ValueError(kind)


class _NumpyLike:
    """Array functions for NumPy and CuPy (the same names)."""

    def __init__(self, xp):
        self.xp = xp

    def contiguous(self, a):
        return self.xp.ascontiguousarray(a)

    def moveaxis(self, a, src, dst):
        return self.xp.moveaxis(a, src, dst)

    def broadcast_to(self, a, shape):
        return self.xp.broadcast_to(a, shape)

    def empty(self, shape, like):
        return self.xp.empty(shape, dtype=like.dtype)

    def zeros(self, shape, like):
        return self.xp.zeros(shape, dtype=like.dtype)

    def full(self, shape, value, like):
        return self.xp.full(shape, value, dtype=like.dtype)

    def asarray(self, value, like):
        return self.xp.asarray(value, dtype=like.dtype)

    def sum_to_shape(self, a, shape):
        """Sum a broadcast gradient back down to ``shape``."""
        shape = tuple(shape)
        if a.shape == shape:
            return a
        lead = a.ndim - len(shape)
        a = a.sum(axis=tuple(range(lead))) if lead else a
        axes = tuple(i for i, s in enumerate(shape) if s == 1 and a.shape[i] != 1)
        return a.sum(axis=axes, keepdims=True) if axes else a

    def is_contiguous(self, a):
        return a.flags.c_contiguous

    def copy_into(self, dst, src):
        dst[...] = src

    def int64(self, a):
        return a.astype(self.xp.int64, copy=False)

    def transpose_last(self, a):
        return self.xp.swapaxes(a, -1, -2)


class _TorchNS:
    """The same array functions, spelled for torch tensors."""

    def __init__(self):
        import torch

        self.xp = torch

    def contiguous(self, a):
        return a.contiguous()

    def moveaxis(self, a, src, dst):
        return self.xp.movedim(a, src, dst)

    def broadcast_to(self, a, shape):
        return a.expand(shape)

    def empty(self, shape, like):
        return self.xp.empty(shape, dtype=like.dtype, device=like.device)

    def zeros(self, shape, like):
        return self.xp.zeros(shape, dtype=like.dtype, device=like.device)

    def full(self, shape, value, like):
        return self.xp.full(shape, value, dtype=like.dtype, device=like.device)

    def asarray(self, value, like):
        return self.xp.as_tensor(value, dtype=like.dtype, device=like.device)

    def sum_to_shape(self, a, shape):
        shape = tuple(shape)
        return a if tuple(a.shape) == shape else a.sum_to_size(shape) if len(shape) == a.ndim else (
            a.sum(dim=tuple(range(a.ndim - len(shape)))).sum_to_size(shape) if shape else a.sum())

    def is_contiguous(self, a):
        return a.is_contiguous()

    def copy_into(self, dst, src):
        dst.copy_(src)

    def int64(self, a):
        return a.to(self.xp.int64)

    def transpose_last(self, a):
        return a.transpose(-1, -2)


_NAMESPACES: dict = {}


class _NumpyNS(_NumpyLike):
    """NumPy: large contiguous copies come from the recycled blocks of the Numba kernels (`dlcore._pool`)."""

    def contiguous(self, a):
        return _pool.contiguous(a)


def namespace(native: str):
    """Array functions for a native kind: 'numpy', 'torch' or 'cupy'."""
    ns = _NAMESPACES.get(native)
    if ns is None:
        if native == "numpy":
            ns = _NumpyNS(np)
        elif native == "cupy":
            import cupy

            ns = _NumpyLike(cupy)
        else:
            ns = _TorchNS()
        _NAMESPACES[native] = ns
    return ns
