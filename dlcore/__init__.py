"""dlcore: fused deep-learning kernels behind torch.nn.functional's names.

    import dlcore
    y = dlcore.ops.softmax(x)                 # NumPy, torch or CuPy in; the same kind out
    print(dlcore.explain("softmax", x))       # which kernel runs, and why

Backends: 'numpy' (reference), 'numba' (CPU), 'triton' and 'cupy' (GPU); see `dlcore._dispatch` for the
precedence rules. ``import dlcore`` imports only NumPy: backends and submodules load on first use.
"""
from dlcore import _kernels_alias

_kernels_alias.install()

from dlcore._dispatch import (  # noqa: E402
    BackendError,
    BackendFallbackWarning,
    available_backends,
    backend,
    get_backend,
    set_backend,
)

__version__ = "0.1.0"

__all__ = [
    "BackendError", "BackendFallbackWarning", "available_backends", "backend", "get_backend", "set_backend",
    "explain", "set_num_threads", "get_num_threads", "ops", "__version__",
]

_LAZY_SUBMODULES = ("ops", "nn", "optim", "train", "tasks", "rl", "torch", "autograd")


def explain(op: str, *args, **kwargs):
    """Say which implementation would run for ``dlcore.ops.<op>(*args, **kwargs)``, and why.

    Args:
        op: an op name from `dlcore.ops` (``'softmax'``, ``'cross_entropy'``, ...).
        *args, **kwargs: the arguments you would pass to the op (only arrays and ``backend=`` matter).

    Returns:
        An `Explanation` (prints as a short paragraph: backend, kernel function, reason, fallback notes).

    Example:
        >>> print(dlcore.explain("softmax", np.ones((4, 7), np.float32)))
        softmax(input: NumPy array float32 (4, 7)) -> backend 'numba': dlcore.kernels.numba.softmax.softmax_forward
          why: auto: first available of [numba > numpy] for NumPy arrays
    """
    import inspect

    from dlcore import _arrays, _dispatch, ops

    if op not in _dispatch.OPS:
        raise ValueError(f"explain: unknown op {op!r}; ops: {', '.join(_dispatch.OPS)}")
    bound = inspect.signature(getattr(ops, op)).bind_partial(*args, **kwargs)
    named = {}
    for name, value in bound.arguments.items():
        try:
            _arrays.kind_of(value)
            named[name] = value
        except TypeError:
            pass
    kind = _arrays.common_kind(named)
    choice = _dispatch.resolve(op, kind, bound.arguments.get("backend"))
    return _dispatch.explain_choice(choice, named)


def set_num_threads(n: int) -> None:
    """Set the number of threads dlcore's Numba CPU kernels use (``numba.set_num_threads``).

    Only Numba's threads: torch's (``torch.set_num_threads``) and the BLAS library's under matmul/linear
    (OpenBLAS: ``OPENBLAS_NUM_THREADS``, or threadpoolctl) are left alone. The upper bound is fixed when
    Numba starts its thread pool: ``NUMBA_NUM_THREADS`` if set, else the number of cores. Results do not
    depend on the thread count beyond rounding (tests/dlcore/test_threads.py).

    Args:
        n: a positive int, at most ``NUMBA_NUM_THREADS``.

    Raises:
        TypeError: n is not an int.
        ValueError: n < 1 or n > NUMBA_NUM_THREADS.

    Example:
        >>> dlcore.set_num_threads(1); dlcore.get_num_threads()
        1
    """
    import operator

    import numba

    try:
        n = operator.index(n)  # ints and NumPy integers; not floats or strings
    except TypeError:
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}") from None
    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= n <= limit:
        raise ValueError(f"set_num_threads: n must be in [1, {limit}] (NUMBA_NUM_THREADS={limit}), got {n}")
    numba.set_num_threads(n)


def get_num_threads() -> int:
    """Threads the Numba CPU kernels use now (in the calling thread; see `set_num_threads`)."""
    import numba

    return numba.get_num_threads()


_LAZY_ATTRS = {
    "Tensor": ("dlcore.autograd", "Tensor"),
    "tensor": ("dlcore.autograd", "tensor"),
    "no_grad": ("dlcore.autograd", "no_grad"),
    "enable_grad": ("dlcore.autograd", "enable_grad"),
    "is_grad_enabled": ("dlcore.autograd", "is_grad_enabled"),
    "cat": ("dlcore.autograd", "cat"),
    "stack": ("dlcore.autograd", "stack"),
    "where": ("dlcore.autograd", "where"),
    "save": ("dlcore.io", "save"),
    "load": ("dlcore.io", "load"),
}


def __getattr__(name):
    if name in _LAZY_ATTRS:
        import importlib

        mod, attr = _LAZY_ATTRS[name]
        return getattr(importlib.import_module(mod), attr)
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"dlcore.{name}")
    raise AttributeError(f"module 'dlcore' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY_SUBMODULES) + list(_LAZY_ATTRS))
