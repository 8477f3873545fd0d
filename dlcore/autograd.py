"""dlcore's autograd: a Tensor over a NumPy, torch or CuPy array, and a reverse-mode engine small enough
to read in one sitting (micrograd's shape, tinygrad's single rule table).

Every operation that produces a Tensor from Tensors that require grad records a `Node`: its parents and a
closure that maps the output's gradient to one gradient per parent. `Tensor.backward` walks the graph in
reverse topological order, summing gradients that meet at a tensor, and stores them on the leaves.

Two kinds of rules exist, and both live in one place each:

* the hot ops (matmul, linear, softmax, attention, losses, layer_norm, activations) run through
  `dlcore.ops`, whose forward/backward pairs call the fused ``*_backward`` kernels (`apply_op` below);
* the glue (arithmetic, reductions, reshapes, indexing, concatenation, where) is the `RULES` table at the
  bottom of this file, one small function per op, written against the array's own namespace.
"""
from __future__ import annotations

import contextlib
import contextvars
import math

import numpy as np

from dlcore import _arrays, _pool

_grad_enabled: contextvars.ContextVar = contextvars.ContextVar("dlcore_grad_enabled", default=True)


def is_grad_enabled() -> bool:
    return _grad_enabled.get()


@contextlib.contextmanager
def no_grad():
    """Inside this block, operations record no graph (inference, optimizer updates)."""
    token = _grad_enabled.set(False)
    try:
        yield
    finally:
        _grad_enabled.reset(token)


@contextlib.contextmanager
def enable_grad():
    token = _grad_enabled.set(True)
    try:
        yield
    finally:
        _grad_enabled.reset(token)


class Node:
    """How an output was made: its parent Tensors (None where no gradient flows) and the backward closure."""

    __slots__ = ("parents", "backward", "name")

    def __init__(self, parents, backward, name):
        self.parents = parents
        self.backward = backward
        self.name = name


# ---------------------------------------------------------------------------------------------- array maths
class _NumpyMath:
    """The handful of array functions the glue rules need, for NumPy (and CuPy, same names)."""

    def __init__(self, xp):
        self.xp = xp

    def sum(self, a, axis=None, keepdims=False):
        return self.xp.sum(a, axis=axis, keepdims=keepdims)

    def amax(self, a, axis=None, keepdims=False):
        return self.xp.max(a, axis=axis, keepdims=keepdims)

    def permute(self, a, axes):
        return self.xp.transpose(a, axes)

    def concat(self, arrays, axis):
        return self.xp.concatenate(arrays, axis=axis)

    def index_add(self, shape, like, index, g):
        z = self.xp.zeros(shape, dtype=like.dtype)
        if self.xp is np and isinstance(index, np.ndarray) and index.dtype.kind in "iu" and index.size \
                and g.ndim == index.ndim + len(shape) - 1:
            # rows gathered by an integer array (an embedding lookup): sort the rows by index and sum each
            # run with one reduceat, instead of np.add.at's element-by-element scatter
            idx = index.reshape(-1)
            idx = np.where(idx < 0, idx + shape[0], idx)  # -1 and n-1 name one row (the forward checked bounds)
            rows = g.reshape((idx.size,) + tuple(shape[1:]))
            order = np.argsort(idx, kind="stable")  # stable: each row's terms are summed in input order
            sorted_idx = idx[order]
            starts = np.flatnonzero(np.r_[True, sorted_idx[1:] != sorted_idx[:-1]])
            z[sorted_idx[starts]] = np.add.reduceat(rows[order], starts, axis=0)
            return z
        self.xp.add.at(z, index, g)
        return z

    def astype_like(self, a, like):
        return a.astype(like.dtype, copy=False) if hasattr(a, "astype") else self.xp.asarray(a, dtype=like.dtype)

    def asarray(self, v, like):
        return self.xp.asarray(v, dtype=like.dtype)

    def take_along(self, a, idx, axis):
        return self.xp.take_along_axis(a, idx, axis=axis)

    def put_along_add(self, shape, like, idx, g, axis):
        z = self.xp.zeros(shape, dtype=like.dtype)
        where = list(self.xp.indices(idx.shape, sparse=True))
        where[axis] = idx
        self.xp.add.at(z, tuple(where), g)  # accumulates where an index repeats along a line
        return z

    def add(self, a, b):
        return _pool.add(a, b) if self.xp is np else a + b

    def reshape(self, a, shape):
        return _pool.reshape(a, shape) if self.xp is np else a.reshape(shape)

    def __getattr__(self, name):  # exp, log, tanh, sqrt, where, abs, maximum, zeros_like, ...
        return getattr(self.xp, name)


class _TorchMath:
    def __init__(self):
        import torch

        self.xp = torch

    def sum(self, a, axis=None, keepdims=False):
        return a.sum() if axis is None else a.sum(dim=axis, keepdim=keepdims)

    def amax(self, a, axis=None, keepdims=False):
        return a.amax() if axis is None else a.amax(dim=axis, keepdim=keepdims)

    def permute(self, a, axes):
        return a.permute(*axes)

    def concat(self, arrays, axis):
        return self.xp.cat(arrays, dim=axis)

    def index_add(self, shape, like, index, g):
        z = self.xp.zeros(shape, dtype=like.dtype, device=like.device)
        return z.index_put_(index if isinstance(index, tuple) else (index,), g, accumulate=True) \
            if not isinstance(index, slice) else z.__setitem__(index, g) or z

    def astype_like(self, a, like):
        return a.to(like.dtype) if hasattr(a, "to") else self.xp.as_tensor(a, dtype=like.dtype, device=like.device)

    def asarray(self, v, like):
        return self.xp.as_tensor(v, dtype=like.dtype, device=like.device)

    def take_along(self, a, idx, axis):
        return self.xp.take_along_dim(a, idx, dim=axis)

    def put_along_add(self, shape, like, idx, g, axis):
        z = self.xp.zeros(shape, dtype=like.dtype, device=like.device)
        return z.scatter_add_(axis, idx, g)

    def add(self, a, b):
        return a + b

    def reshape(self, a, shape):
        return a.reshape(shape)

    def __getattr__(self, name):
        return getattr(self.xp, name)


_MATH: dict = {}


def math_of(a):
    key = "torch" if _arrays.is_torch(a) else "cupy" if _arrays.is_cupy(a) else "numpy"
    m = _MATH.get(key)
    if m is None:
        if key == "torch":
            m = _TorchMath()
        elif key == "cupy":
            import cupy

            m = _NumpyMath(cupy)
        else:
            m = _NumpyMath(np)
        _MATH[key] = m
    return m


def _sum_to(m, g, shape):
    """Sum a broadcast gradient down to ``shape``."""
    shape = tuple(shape)
    if tuple(g.shape) == shape:
        return g
    lead = g.ndim - len(shape)
    if lead:
        g = m.sum(g, axis=tuple(range(lead)))
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1)
    return m.sum(g, axis=axes, keepdims=True) if axes else g


# ---------------------------------------------------------------------------------------------- the Tensor
class Tensor:
    """An array (NumPy, torch or CuPy) with a gradient.

    Args:
        data: an array, a Tensor, or anything ``np.asarray`` takes (Python floats become float32).
        requires_grad: record operations on this tensor so `backward` can fill ``.grad``.

    Example:
        >>> x = dlcore.Tensor(np.random.randn(4, 3).astype("float32"), requires_grad=True)
        >>> loss = dlcore.ops.mse_loss(x @ w, y); loss.backward(); x.grad.shape
        (4, 3)
    """

    _is_dlcore_tensor = True
    __array_priority__ = 1000  # numpy_array + tensor -> Tensor.__radd__
    __slots__ = ("data", "grad", "requires_grad", "_node", "__weakref__")

    def __init__(self, data, requires_grad=False):
        if isinstance(data, Tensor):
            data = data.data
        elif not (isinstance(data, np.ndarray) or _arrays.is_torch(data) or _arrays.is_cupy(data)):
            data = np.asarray(data)
            if data.dtype.kind == "f":  # Python floats default to float32, as torch.tensor does
                data = data.astype(np.float32)
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._node = None

    # -- introspection ---------------------------------------------------------------------------
    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self):
        return math.prod(self.shape)

    @property
    def is_leaf(self):
        return self._node is None

    def __len__(self):
        return self.shape[0]

    def numpy(self):
        """The data as a NumPy array (a view for NumPy and torch-CPU data, a copy from the GPU)."""
        return _arrays.from_native(_arrays.to_native(self.data, "numpy"), "numpy")

    def item(self):
        return self.data.item()

    def __float__(self):
        return float(self.item())

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        fn = f", grad_fn={self._node.name}" if self._node is not None else ""
        return f"Tensor({self.data!r}{grad}{fn})"

    def detach(self):
        return Tensor(self.data)

    def zero_grad(self):
        self.grad = None

    # -- the engine ---------------------------------------------------------------------------------
    def backward(self, grad=None):
        """Accumulate d(self)/d(leaf) into ``.grad`` of every leaf that requires grad.

        Args:
            grad: upstream gradient of ``self``'s shape; may be omitted for a single-element tensor.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad (and has no graph)")
        m = math_of(self.data)
        if grad is None:
            if self.size != 1:
                raise RuntimeError(f"grad can be implicitly created only for scalar outputs, got shape {self.shape}")
            grad = m.ones_like(self.data)
        elif isinstance(grad, Tensor):
            grad = grad.data
        order = _topological(self)
        grads = {id(self): grad}
        for t in reversed(order):
            g = grads.pop(id(t), None)
            if g is None:
                continue
            if isinstance(g, _SliceGrads):
                g = g.materialize()
            if t._node is None:
                if t.requires_grad:
                    t.grad = g if t.grad is None else t.grad + g
                continue
            for parent, pg in zip(t._node.parents, t._node.backward(g)):
                if parent is None or pg is None or not parent.requires_grad:
                    continue
                key = id(parent)
                grads[key] = pg if key not in grads else _accumulate(grads[key], pg)

    # -- operators ----------------------------------------------------------------------------------
    def __add__(self, o):
        return _apply("add", self, o)

    def __radd__(self, o):
        return _apply("add", o, self)

    def __sub__(self, o):
        return _apply("sub", self, o)

    def __rsub__(self, o):
        return _apply("sub", o, self)

    def __mul__(self, o):
        return _apply("mul", self, o)

    def __rmul__(self, o):
        return _apply("mul", o, self)

    def __truediv__(self, o):
        return _apply("div", self, o)

    def __rtruediv__(self, o):
        return _apply("div", o, self)

    def __neg__(self):
        return _apply("neg", self)

    def __pow__(self, exponent):
        if isinstance(exponent, Tensor):
            raise TypeError("Tensor ** Tensor is not supported; use exp(log(x) * y)")
        return _apply("pow", self, exponent=float(exponent))

    def __matmul__(self, o):
        from dlcore import ops

        return ops.matmul(self, _as_tensor(o, self))

    def __rmatmul__(self, o):
        from dlcore import ops

        return ops.matmul(_as_tensor(o, self), self)

    def __getitem__(self, index):
        if isinstance(index, Tensor):
            index = index.data
        return _apply("getitem", self, index=index)

    # comparisons give plain (non-differentiable) boolean arrays
    def __lt__(self, o):
        return self.data < _data(o)

    def __le__(self, o):
        return self.data <= _data(o)

    def __gt__(self, o):
        return self.data > _data(o)

    def __ge__(self, o):
        return self.data >= _data(o)

    # -- methods --------------------------------------------------------------------------------------
    def sum(self, dim=None, keepdim=False):
        return _apply("sum", self, axis=_axes(dim), keepdims=keepdim)

    def mean(self, dim=None, keepdim=False):
        return _apply("mean", self, axis=_axes(dim), keepdims=keepdim)

    def max(self, dim=None, keepdim=False):
        return _apply("max", self, axis=_axes(dim), keepdims=keepdim)

    def reshape(self, *shape):
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return _apply("reshape", self, shape=shape)

    view = reshape

    def flatten(self, start_dim=0):
        return self.reshape(self.shape[:start_dim] + (-1,))

    def permute(self, *axes):
        axes = tuple(axes[0]) if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        return _apply("permute", self, axes=tuple(a % self.ndim for a in axes))

    def transpose(self, d0=-2, d1=-1):
        axes = list(range(self.ndim))
        axes[d0], axes[d1] = axes[d1], axes[d0]
        return self.permute(axes)

    @property
    def T(self):
        return self.permute(tuple(reversed(range(self.ndim))))

    def exp(self):
        return _apply("exp", self)

    def log(self):
        return _apply("log", self)

    def tanh(self):
        return _apply("tanh", self)

    def sigmoid(self):
        return _apply("sigmoid", self)

    def sqrt(self):
        return _apply("pow", self, exponent=0.5)

    def abs(self):
        return _apply("abs", self)

    def relu(self):
        from dlcore import ops

        return ops.relu(self)

    def softmax(self, dim=-1):
        from dlcore import ops

        return ops.softmax(self, dim)

    def log_softmax(self, dim=-1):
        from dlcore import ops

        return ops.log_softmax(self, dim)

    def gather(self, dim, index):
        """``out[i][j] = self[i][index[i][j]]`` along ``dim`` (torch.gather)."""
        return _apply("gather", self, axis=dim % self.ndim, index=_data(index))


def _data(x):
    return x.data if isinstance(x, Tensor) else x


def _axes(dim):
    if dim is None:
        return None
    return tuple(dim) if isinstance(dim, (tuple, list)) else (dim,)


def _as_tensor(x, like):
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (int, float)):
        return Tensor(math_of(like.data).asarray(x, like.data))
    return Tensor(x)


def _topological(root):
    order, seen, stack = [], set(), [(root, False)]
    while stack:
        t, done = stack.pop()
        if done:
            order.append(t)
            continue
        if id(t) in seen:
            continue
        seen.add(id(t))
        stack.append((t, True))
        if t._node is not None:
            for p in t._node.parents:
                if p is not None and id(p) not in seen:
                    stack.append((p, False))
    return order


def tensor(data, requires_grad=False):
    return Tensor(data, requires_grad)


def cat(tensors, dim=0):
    """Concatenate Tensors along ``dim``."""
    return _apply_many("cat", list(tensors), axis=dim)


def stack(tensors, dim=0):
    return cat([t.reshape(t.shape[:dim % (t.ndim + 1)] + (1,) + t.shape[dim % (t.ndim + 1):]) for t in tensors], dim)


def where(condition, x, y):
    """``x`` where ``condition`` else ``y``; gradients flow to x and y through the same selection."""
    like = x if isinstance(x, Tensor) else y
    return _apply("where", _as_tensor(x, like), _as_tensor(y, like), condition=_data(condition))


# ---------------------------------------------------------------------------------------------- glue rules
# name: (forward(m, *arrays, **params) -> out, backward(m, g, out, *arrays, **params) -> grads per input)
def _unbroadcast(fn):
    def bwd(m, g, out, a, b, **p):
        ga, gb = fn(m, g, out, a, b, **p)
        return (None if ga is None else _sum_to(m, ga, a.shape), None if gb is None else _sum_to(m, gb, b.shape))

    return bwd


def _getitem_bwd(m, g, out, a, index):
    if isinstance(index, (int, slice)) or (isinstance(index, tuple) and all(isinstance(i, (int, slice)) or i is None
                                                                            or i is Ellipsis for i in index)):
        return (_SliceGrads(m, a, index, g),)  # a view's gradient: placed into a full array when needed
    return (m.index_add(tuple(a.shape), a, index, g),)


class _SliceGrads:
    """The gradients of basic-index views of one array (``qkv[:, :, 0]``, ``x[2:5]``), kept apart until the
    engine needs the array's whole gradient, then written into one buffer.

    Splitting an array into parts (q, k, v out of one projection; chunks) would otherwise cost, per part,
    a zero-filled full-size gradient plus a full-size add to merge it with the others. When the parts are
    integer indices along one axis that together cover it once, the buffer is not even zero-filled.
    """

    __slots__ = ("like", "m", "pieces")

    def __init__(self, m, like, index, g):
        self.m, self.like, self.pieces = m, like, [(index, g)]

    def materialize(self):
        if self._tiles():
            z = self.m.empty_like(self.like)
            for index, g in self.pieces:
                z[index] = g
            return z
        z = self.m.zeros_like(self.like)
        for index, g in self.pieces:
            z[index] += g  # += : overlapping views (x[0:5], x[3:8]) add up
        return z

    def _tiles(self) -> bool:
        """Every piece is ``(:, ..., :, i)`` with one integer i on one shared axis, each i exactly once."""
        axis, seen = None, set()
        for index, _ in self.pieces:
            parts = index if isinstance(index, tuple) else (index,)
            ints = [p for p, x in enumerate(parts) if isinstance(x, (int, np.integer)) and not isinstance(x, bool)]
            if len(ints) != 1 or any(not (isinstance(x, slice) and x == slice(None)) for p, x in enumerate(parts)
                                     if p != ints[0]):
                return False
            if axis is None:
                axis = ints[0]
            if ints[0] != axis:
                return False
            seen.add(int(parts[axis]) % self.like.shape[axis])
        return axis is not None and len(seen) == len(self.pieces) == self.like.shape[axis]


def _accumulate(old, new):
    """The sum of two gradients meeting at one tensor (either may be a `_SliceGrads`)."""
    if isinstance(old, _SliceGrads) and isinstance(new, _SliceGrads) and old.like is new.like:
        old.pieces.extend(new.pieces)
        return old
    if isinstance(old, _SliceGrads):
        old, new = new, old
    if isinstance(new, _SliceGrads):
        if isinstance(old, _SliceGrads):
            old = old.materialize()
        z = new.materialize()  # a fresh array of our own: the other gradient is added into it in place
        z += old
        return z
    return old + new


def _reduce_bwd(m, g, a, axis, keepdims):
    if axis is not None and not keepdims:
        for ax in sorted(x % a.ndim for x in axis):
            g = g.reshape(tuple(g.shape[:ax]) + (1,) + tuple(g.shape[ax:]))
    return g


def _inverse(axes):
    inv = [0] * len(axes)
    for i, a in enumerate(axes):
        inv[a] = i
    return tuple(inv)


def _sigmoid(m, a):
    return 1 / (1 + m.exp(-a))


RULES = {
    "add": (lambda m, a, b: m.add(a, b), _unbroadcast(lambda m, g, o, a, b: (g, g))),
    "sub": (lambda m, a, b: a - b, _unbroadcast(lambda m, g, o, a, b: (g, -g))),
    "mul": (lambda m, a, b: a * b, _unbroadcast(lambda m, g, o, a, b: (g * b, g * a))),
    "div": (lambda m, a, b: a / b, _unbroadcast(lambda m, g, o, a, b: (g / b, -g * a / (b * b)))),
    "neg": (lambda m, a: -a, lambda m, g, o, a: (-g,)),
    "pow": (lambda m, a, exponent: a ** exponent,
            lambda m, g, o, a, exponent: (g * exponent * a ** (exponent - 1),)),
    "exp": (lambda m, a: m.exp(a), lambda m, g, o, a: (g * o,)),
    "log": (lambda m, a: m.log(a), lambda m, g, o, a: (g / a,)),
    "tanh": (lambda m, a: m.tanh(a), lambda m, g, o, a: (g * (1 - o * o),)),
    "sigmoid": (_sigmoid, lambda m, g, o, a: (g * o * (1 - o),)),
    "abs": (lambda m, a: m.abs(a), lambda m, g, o, a: (g * m.sign(a),)),
    "sum": (lambda m, a, axis, keepdims: m.sum(a, axis=axis, keepdims=keepdims),
            lambda m, g, o, a, axis, keepdims: (m.zeros_like(a) + _reduce_bwd(m, g, a, axis, keepdims),)),
    "mean": (lambda m, a, axis, keepdims: m.sum(a, axis=axis, keepdims=keepdims) / _count(a, axis),
             lambda m, g, o, a, axis, keepdims: (
                 m.zeros_like(a) + _reduce_bwd(m, g, a, axis, keepdims) / _count(a, axis),)),
    "max": (lambda m, a, axis, keepdims: m.amax(a, axis=axis, keepdims=keepdims),
            lambda m, g, o, a, axis, keepdims: (
                _max_bwd(m, _reduce_bwd(m, g, a, axis, keepdims), _reduce_bwd(m, o, a, axis, keepdims), a, axis),)),
    "reshape": (lambda m, a, shape: m.reshape(a, shape), lambda m, g, o, a, shape: (m.reshape(g, a.shape),)),
    "permute": (lambda m, a, axes: m.permute(a, axes), lambda m, g, o, a, axes: (m.permute(g, _inverse(axes)),)),
    "getitem": (lambda m, a, index: a[index], _getitem_bwd),
    "gather": (lambda m, a, axis, index: m.take_along(a, index, axis),
               lambda m, g, o, a, axis, index: (m.put_along_add(tuple(a.shape), a, index, g, axis),)),
    "where": (lambda m, a, b, condition: m.where(condition, a, b),
              lambda m, g, o, a, b, condition: (_sum_to(m, m.where(condition, g, 0 * g), a.shape),
                                                _sum_to(m, m.where(condition, 0 * g, g), b.shape))),
}


def _count(a, axis):
    """Elements averaged by a mean over ``axis`` (NaN for none, as torch's mean of an empty tensor)."""
    n = math.prod(a.shape) if axis is None else math.prod(a.shape[x] for x in axis)
    return n if n else float("nan")


def _max_bwd(m, g, o, a, axis):
    hit = a == o  # ties share the gradient equally
    hit = m.astype_like(hit, a)
    count = m.sum(hit, axis=axis, keepdims=True) if axis is not None else m.sum(hit)
    return hit * g / count


def _apply(name, *inputs, **params):
    tensors = [x for x in inputs if isinstance(x, Tensor)]
    like = tensors[0].data
    m = math_of(like)
    arrays = [x.data if isinstance(x, Tensor) else (m.asarray(x, like) if isinstance(x, (int, float)) else x)
              for x in inputs]
    fwd, bwd = RULES[name]
    out = fwd(m, *arrays, **params)
    result = Tensor(out)
    if is_grad_enabled() and any(t.requires_grad for t in tensors):
        parents = tuple(x if isinstance(x, Tensor) and x.requires_grad else None for x in inputs)
        result.requires_grad = True
        result._node = Node(parents, lambda g: bwd(m, g, out, *arrays, **params), name)
    return result


def _apply_many(name, tensors, axis):
    m = math_of(tensors[0].data)
    arrays = [t.data for t in tensors]
    out = m.concat(arrays, axis)
    result = Tensor(out)
    if is_grad_enabled() and any(t.requires_grad for t in tensors):
        sizes = [a.shape[axis] for a in arrays]

        def bwd(g):
            grads, start = [], 0
            for s in sizes:
                idx = [slice(None)] * g.ndim
                idx[axis] = slice(start, start + s)
                grads.append(g[tuple(idx)])
                start += s
            return grads

        result.requires_grad = True
        result._node = Node(tuple(t if t.requires_grad else None for t in tensors), bwd, name)
    return result


# ---------------------------------------------------------------------------------------------- hot ops
SERIAL_BELOW = 1 << 17  # an op whose largest array has fewer elements runs its kernels on one thread


class _OneThread:
    """Run small ops on one thread (Numba's and the BLAS library's), like torch's grain size does.

    A mini-batch step launches dozens of kernels on arrays of a few thousand elements; each parallel launch
    wakes the thread pools, and on a busy machine waits for a descheduled worker (an MLP step of 128x256
    measured 0.34x torch that way, every kernel taking one scheduler slice). Below `SERIAL_BELOW` elements
    the op runs on the calling thread. The numbers do not change beyond the rounding a thread count may
    bring (every kernel is tested for that). Only what the op uses is switched (each switch costs
    microseconds, twice per op): Numba's count for the Numba kernels; a small product keeps BLAS's own
    threading (see `_threads`). The BLAS lowering (``blas=True``) is the one
    `dlcore.kernels.numba._blas_threads` shares with the split products: nested and concurrent use from
    several Python threads is safe (lowered on the first entry, restored on the last).

    ``self(blas, numba, step)`` returns an `_OpThreads` context manager (a small object, not a generator:
    an op enters two of them, forward and backward, so the switch itself is kept to a few microseconds).
    """

    def __init__(self):
        from dlcore.kernels.numba import matmul as numba_matmul
        from dlcore.kernels.numba._blas_threads import blas_threads

        self.blas = blas_threads
        self.step_depth = numba_matmul._between_kernels  # `between_numba_kernels`'s per-thread depth
        try:  # Numba's own setters, without the public wrappers' checks (~6 us -> ~1 us per switch)
            from numba.np.ufunc import parallel as _par

            numba_get, numba_set = _par._get_num_threads, _par._set_num_threads
            numba_get()
        except (ImportError, AttributeError, TypeError):
            import numba

            numba_get, numba_set = numba.get_num_threads, numba.set_num_threads
        self.numba_get, self.numba_set = numba_get, numba_set

    def __call__(self, blas=True, numba=True, step=False):
        return _OpThreads(self, blas, numba, step)


class _OpThreads:
    """One op's thread setting: BLAS lowered to one thread (``blas``), Numba on one thread (``numba``), the
    products marked as sitting between Numba kernels (``step``, as `between_numba_kernels`); undone in
    reverse order on exit."""

    __slots__ = ("_blas", "_numba", "_owner", "_saved", "_step")

    def __init__(self, owner, blas, numba, step):
        self._owner, self._blas, self._numba, self._step = owner, blas, numba, step
        self._saved = None

    def __enter__(self):
        o = self._owner
        if self._step:
            o.step_depth.depth += 1
        if self._blas:
            o.blas.lower()
        if self._numba:
            self._saved = o.numba_get()  # Numba's count is per Python thread
            o.numba_set(1)
        return self

    def __exit__(self, *exc):
        o = self._owner
        if self._numba:
            o.numba_set(self._saved)
        if self._blas:
            o.blas.restore()
        if self._step:
            o.step_depth.depth -= 1
        return False


# Ops whose Numba-backend kernels call BLAS (and whether they also run Numba kernels): the others run only
# Numba kernels, so only Numba's count is switched for them.
BLAS_OPS = {"matmul": False, "linear": False, "linear_act": True}


_one_thread = None
_NO_SWITCH = contextlib.nullcontext()  # reusable: nullcontext keeps no state


def _is_small(call, arrays) -> bool:
    """Whether ``call``'s kernels on ``arrays`` (NumPy, Numba backend) should run on one thread."""
    if call.native != "numpy" or call.choice.backend.name != "numba":
        return False
    biggest = 0
    for a in arrays:
        if a is not None and hasattr(a, "size"):
            biggest = max(biggest, a.size)
    return 0 < biggest < SERIAL_BELOW


def _threads(small, call):
    """The thread setting an op's kernels run under: one thread for small ops (`_OneThread`); for the
    Numba backend's BLAS ops, products marked as sitting between Numba kernels (see
    `dlcore.kernels.numba.matmul.between_numba_kernels`)."""
    op = call.op
    if op in BLAS_OPS and call.native == "numpy" and call.choice.backend.name == "numba":
        if not small:
            from dlcore.kernels.numba.matmul import between_numba_kernels

            return between_numba_kernels()
        # A small product keeps the BLAS library's own threads (OpenBLAS runs products under ~2^18
        # multiply-adds on one thread by itself): the Numba kernels around it are small too and run on the
        # calling thread, so OpenBLAS's spinning worker holds the other core without taking it from anyone.
        # MLP step 128x64-256-256-10 (bench/bench_train_step.py, 30 interleaved rounds, 2026-11-27): 2.51 ms
        # with BLAS lowered to one thread, 2.06 ms without; torch 1.89.
        return _one(blas=False, numba=BLAS_OPS[op], step=True)
    if not small:
        return _NO_SWITCH
    return _one(blas=False, numba=True)


def small_op_threads(call, arrays):
    """The thread setting for a plain NumPy call of a non-BLAS op on the Numba backend (no autograd): one
    Numba thread when the op is small (`_is_small`), else None (the kernels' own parallel launch).

    A small op gains nothing from the pool, and right after a multi-threaded OpenBLAS call (the user's own
    ``x @ W``, say), whose worker spins on the other core for ~0.1 s, a parallel launch waits for that core:
    ``dlcore.ops.relu`` of 128 x 256 floats took 8.0 ms there instead of ~5 us (2-core Zen 5 VM, 2026-11-27).
    BLAS ops keep their own policy (a lone product stays on the fastest BLAS)."""
    if call.op in BLAS_OPS or not _is_small(call, arrays):
        return None
    return _one(blas=False, numba=True)


def _one(blas, numba, step=False):
    global _one_thread
    if _one_thread is None:
        _one_thread = _OneThread()
    return _one_thread(blas=blas, numba=numba, step=step)


def apply_op(call, forward, backward, arrays, params):
    """Run a dlcore.ops forward/backward pair on Tensors: the result records a Node whose backward calls
    the op's fused backward kernel. Small ops run on one thread (`_OneThread`)."""
    needs = tuple(isinstance(a, Tensor) and a.requires_grad for a in arrays)
    record = is_grad_enabled() and any(needs)
    call.grad_needed = record
    if call.numpy_data and call.native == "numpy":  # Tensors over NumPy arrays into NumPy kernels
        natives = [a.data if isinstance(a, Tensor) else a for a in arrays]
    else:
        natives = [call.to_native(a) for a in arrays]
    small = _is_small(call, natives)
    with _threads(small, call):
        out, saved = forward(call, *natives, **params)
    result = Tensor(call.from_native(out))
    if record:
        small = small and getattr(out, "size", 0) < SERIAL_BELOW  # the gradient has the output's size

        def bwd(g):
            with _threads(small, call):
                grads = backward(call, saved, call.to_native(g), needs, **params)
            return [call.from_native(x) if (x is not None and n) else None for x, n in zip(grads, needs)]

        result.requires_grad = True
        result._node = Node(tuple(a if n else None for a, n in zip(arrays, needs)), bwd, call.op)
    return result
