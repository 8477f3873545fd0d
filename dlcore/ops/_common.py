"""Plumbing shared by every launcher in dlcore.ops: argument checks, dispatch, array conversion, and the
bridge that gives torch tensors gradients through dlcore's own backward kernels.

Every differentiable op is written once as a pair of functions on *native* arrays (the backend's own kind):

    forward(call, *arrays, **params)  -> (output, saved)
    backward(call, saved, grad_output, needs, **params) -> one gradient (or None) per array

`Call.apply` runs the pair directly, or, for torch tensors that require grad, through `torch.autograd`;
dlcore's own autograd (`dlcore.Tensor`) uses the same pairs, so every backward rule lives in one place.
"""
from __future__ import annotations

import functools
import sys

import numpy as np

from dlcore import _arrays, _dispatch

_ndarray = np.ndarray
_torch_tensor = [None]  # torch.Tensor, looked up once torch is imported (dlcore never imports it itself)


def _torch_tensor_type():
    t = _torch_tensor[0]
    if t is None:
        torch = sys.modules.get("torch")
        if torch is not None:
            t = _torch_tensor[0] = torch.Tensor
    return t


class Call:
    """One call of one op: the chosen backend and the conversions to and from its native arrays."""

    __slots__ = ("choice", "dtype", "grad_needed", "k", "kind", "native", "ns", "numpy_data", "op", "plain",
                 "torch_plain")

    def __init__(self, op: str, named_arrays: dict, backend: str | None = None):
        self.op = op
        # plain: every array is a bare NumPy array (the common CPU case), so `apply` needs no conversions;
        # numpy_data: every array is a NumPy array or a dlcore Tensor over one (a CPU training step);
        # torch_plain: every array is a bare torch CPU tensor that needs no gradient and carries no negative
        # bit, so each is viewed with `.numpy()` and nothing else (an inference call from torch code). All
        # three are found in one pass over the arguments (the general kind check costs several us per op).
        plain = numpy_data = torch_plain = True
        seen = False
        tensor = None
        for a in named_arrays.values():
            if a is None:
                continue
            seen = True
            t = type(a)
            if t is _ndarray:
                torch_plain = False
                continue
            plain = False
            if numpy_data and getattr(t, "_is_dlcore_tensor", False) and type(a.data) is _ndarray:
                torch_plain = False  # a dlcore Tensor (the training-step case: checked first, cheapest)
                continue
            numpy_data = False
            if torch_plain:
                tensor = tensor or _torch_tensor_type()
                torch_plain = t is tensor and not (a.is_cuda or a.requires_grad or a.is_neg())
            if not torch_plain:
                break
        self.plain, self.numpy_data = plain, numpy_data and seen
        self.torch_plain = torch_plain and seen and not plain
        if self.numpy_data:
            self.kind = "numpy"
        else:
            self.kind = "torch_cpu" if self.torch_plain else _arrays.common_kind(named_arrays)
        self.choice = _dispatch.resolve(op, self.kind, backend)
        self.k = self.choice.module  # the kernel module: self.k.softmax_forward(...)
        self.native = self.choice.backend.native
        self.ns = _arrays.namespace(self.native)
        self.dtype = None
        self.grad_needed = False  # True while running under autograd: fused ops then emit gradients too

    def to_native(self, a):
        return _arrays.to_native(a, self.native)

    def from_native(self, a):
        return _arrays.from_native(a, self.kind)

    # -- argument checks ------------------------------------------------------------------------
    def float_args(self, named: dict) -> str:
        """Check every non-None array in ``named`` is floating point with one shared dtype; return it."""
        allowed = _arrays.CPU_FLOAT_DTYPES if self.native == "numpy" else _arrays.FLOAT_DTYPES
        first = None
        for name, a in named.items():
            if a is None:
                continue
            if self.numpy_data:
                dt = _arrays._DTYPE_NAMES.get(a.dtype if type(a) is _ndarray else a.data.dtype) or _arrays.dtype_name(a)
            elif self.torch_plain:
                dt = _arrays._DTYPE_NAMES.get(a.dtype) or _arrays.dtype_name(a)
            else:
                dt = _arrays.dtype_name(a)
            if dt not in allowed:
                raise TypeError(
                    f"{self.op}: '{name}' must be a floating-point array ({' or '.join(allowed)} on the "
                    f"'{self.choice.backend.name}' backend), got {dt}"
                )
            if first is None:
                first, self.dtype = name, dt
            elif dt != self.dtype:
                raise TypeError(f"{self.op}: '{name}' is {dt} but '{first}' is {self.dtype}; cast one of them")
        return self.dtype

    # -- running -------------------------------------------------------------------------------
    def apply(self, forward, backward, arrays: tuple, **params):
        """Run ``forward`` on the native views of ``arrays``; wire up torch autograd when it is needed."""
        if self.plain and self.native == "numpy":  # NumPy in, NumPy kernels: nothing to convert or record
            return self._run_plain(forward, arrays, params)
        if self.torch_plain and self.native == "numpy":  # torch CPU tensors, no autograd: views both ways
            natives = tuple(None if a is None else a.numpy() for a in arrays)
            return self.from_native(self._run_plain(forward, natives, params))
        if (self.numpy_data and not self.plain) or any(_arrays.is_dlcore_tensor(a) for a in arrays):
            return _apply_op()(self, forward, backward, arrays, params)
        if self.kind.startswith("torch") and _torch_needs_grad(arrays):
            self.grad_needed = True
            return _bridge().apply(self, forward, backward, params, *arrays)
        out, _ = forward(self, *(self.to_native(a) for a in arrays), **params)
        return self.from_native(out)

    def _run_plain(self, forward, arrays, params):
        # NumPy arrays into NumPy kernels, nothing recorded; a small op runs on one thread
        # (`small_op_threads`)
        threads = _small_op_threads()(self, arrays)
        if threads is None:
            return forward(self, *arrays, **params)[0]
        with threads:
            return forward(self, *arrays, **params)[0]


@functools.cache
def _apply_op():
    from dlcore.autograd import apply_op  # imported on first use: dlcore.autograd imports dlcore.ops

    return apply_op


@functools.cache
def _small_op_threads():
    from dlcore.autograd import small_op_threads  # imported on first use, as _apply_op

    return small_op_threads


def _torch_needs_grad(arrays) -> bool:
    import torch

    return torch.is_grad_enabled() and any(_arrays.is_torch(a) and a.requires_grad for a in arrays)


@functools.cache
def _bridge():
    """Build the torch.autograd.Function once, on first use (so `import dlcore` never imports torch)."""
    import torch
    from torch.autograd.function import once_differentiable

    class DlcoreFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, call, forward, backward, params, *arrays):
            out, saved = forward(call, *(call.to_native(a) for a in arrays), **params)
            ctx.call, ctx.backward, ctx.params, ctx.saved = call, backward, params, saved
            return call.from_native(out)

        @staticmethod
        @once_differentiable
        def backward(ctx, grad):
            call = ctx.call
            needs = ctx.needs_input_grad[4:]
            grads = ctx.backward(call, ctx.saved, call.to_native(grad), needs, **ctx.params)
            return (None, None, None, None) + tuple(
                call.from_native(g) if (g is not None and n) else None for g, n in zip(grads, needs)
            )

    return DlcoreFunction


def check_reduction(op: str, reduction: str) -> str:
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"{op}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    return reduction


def normalize_dim(op: str, dim: int, ndim: int) -> int:
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise TypeError(f"{op}: dim must be an int, got {type(dim).__name__}")
    lo, hi = (-1, 0) if ndim == 0 else (-ndim, ndim - 1)
    if not lo <= dim <= hi:
        raise IndexError(f"{op}: dim {dim} is out of range for a {ndim}-d input (expected [{lo}, {hi}])")
    return dim % max(ndim, 1)


def shape_of(a) -> tuple:
    return tuple(a.shape)
