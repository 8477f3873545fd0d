"""Large NumPy temporaries from the Numba kernels' recycled blocks (`dlcore.kernels.numba._blocks`).

The kernels' own outputs and scratch come from that pool; this module lets the glue around them (contiguous
copies before a kernel, reshapes that must copy, the residual ``a + b`` of autograd) draw from it too, so a
training loop stops paying first-touch page faults for memory it freed one step earlier. Arrays under the
pool's threshold, and anything that is not a plain same-dtype NumPy case, take NumPy's own path; every
function returns exactly the values NumPy's spelling would.
"""
from __future__ import annotations

import warnings

import numpy as np

_blocks = None  # the module, imported on first use (it lives in the Numba kernel package)


def _pool():
    global _blocks
    if _blocks is None:
        try:
            from dlcore.kernels.numba import _blocks as b
        except ImportError:  # no Numba: NumPy's allocator
            b = False
        _blocks = b
    return _blocks


def _pooled(nbytes) -> bool:
    b = _pool()
    return bool(b) and nbytes >= b.MIN_BYTES


def contiguous(a):
    """``np.ascontiguousarray(a)``; a large non-contiguous NumPy array is copied into a recycled block."""
    if isinstance(a, np.ndarray) and a.ndim and not a.flags.c_contiguous and _pooled(a.nbytes):
        out = _blocks.empty(a.shape, a.dtype)
        np.copyto(out, a)
        return out
    return np.ascontiguousarray(a)


def reshape(a, shape):
    """``a.reshape(shape)``: a view where NumPy gives one; else the C-order copy, in a recycled block when large."""
    if isinstance(a, np.ndarray) and not a.flags.c_contiguous and _pooled(a.nbytes):
        try:
            return _reshape_view(a, shape)
        except (AttributeError, ValueError):  # no view possible: NumPy would copy in C order, so does this
            return contiguous(a).reshape(shape)
    return a.reshape(shape)


def add(a, b):
    """``a + b``; two large NumPy arrays of one shape and dtype are added into a recycled block."""
    if (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape and a.dtype == b.dtype
            and a.dtype.kind == "f" and _pooled(a.nbytes)):
        return np.add(a, b, out=_blocks.empty(a.shape, a.dtype))
    return a + b


def _reshape_view(a, shape):
    """``a`` reshaped without a copy; ValueError where only a copy would do."""
    try:
        return np.reshape(a, shape, copy=False)  # NumPy >= 2.1
    except TypeError:
        view = a.view()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            view.shape = _full_shape(shape, a.size)  # assigning .shape never copies (AttributeError if it must)
        return view


def _full_shape(shape, size):
    """``shape`` with a -1 resolved (as ``reshape`` accepts it); an int is a 1-D shape."""
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if -1 in shape:
        known = 1
        for n in shape:
            if n != -1:
                known *= n
        shape = tuple(size // known if n == -1 and known else n for n in shape)
    return shape
