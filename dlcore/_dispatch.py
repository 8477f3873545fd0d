"""Backend dispatch: which kernel runs for which op, array and setting, and why.

The registry is two tables you can read in one sitting:

* `BACKENDS`: each backend, the array kinds it computes on, what it needs installed.
* `OPS`: each public op, the kernel module that implements it and that module's forward/backward names.
  A backend implements an op when ``dlcore/kernels/<backend>/<module>.py`` defines those functions;
  modules are imported lazily, the first time an op runs on that backend.

Resolution, highest precedence first (tests in tests/dlcore/test_dispatch.py pin each rule down):

1. the explicit ``backend=`` argument of the op;
2. the per-op environment variable ``DLCORE_BACKEND_<OP>`` (``DLCORE_BACKEND_SOFTMAX=numpy``);
3. the environment variable ``DLCORE_BACKEND``;
4. the innermost ``with dlcore.backend(name):`` block, else ``dlcore.set_backend(name)``;
5. ``'auto'``: the first backend in `AUTO_ORDER` for the array kind that is available and implements the op.

A backend named by rules 1-4 that is unknown, not installed, or unable to take the arrays raises
`BackendError`, naming the backend and what to install. A named backend that is available but lacks the
op falls back to the auto order with a `BackendFallbackWarning` (once per op and backend), and
`dlcore.explain` says so: nothing falls back silently.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import importlib.util
import os
import warnings
from dataclasses import dataclass, field

from dlcore import _arrays


class BackendError(RuntimeError):
    """A backend was asked for that is unknown, not installed, or cannot take the given arrays."""


class BackendFallbackWarning(UserWarning):
    """A requested backend lacks an op, and another backend ran it instead."""


@dataclass(frozen=True)
class Backend:
    name: str
    kinds: tuple  # array kinds it computes on
    native: str  # the array kind its kernels take: 'numpy', 'torch' or 'cupy'
    requires: tuple  # importable modules it needs
    install: str  # what to tell a user who lacks it
    description: str

    def accepted_kinds(self) -> tuple:
        if self.name == "triton" and os.environ.get("TRITON_INTERPRET") == "1":
            return self.kinds + ("torch_cpu",)
        return self.kinds

    def missing(self) -> str | None:
        """Why this backend cannot run here, or None when it can."""
        for mod in self.requires:
            if importlib.util.find_spec(mod) is None:
                return f"the '{mod}' package is not installed ({self.install})"
        if self.name == "triton" and os.environ.get("TRITON_INTERPRET") != "1" and not _cuda_available():
            return "Triton needs a CUDA GPU, or TRITON_INTERPRET=1 to run its kernels on torch CPU tensors"
        if self.name == "cupy" and not _cupy_has_device():
            return "CuPy is installed but no CUDA device is visible"
        return None


BACKENDS = {
    b.name: b
    for b in (
        Backend("numpy", ("numpy", "torch_cpu"), "numpy", (), "NumPy is always there",
                "plain NumPy reference kernels (float64-accurate formulas; slow)"),
        Backend("numba", ("numpy", "torch_cpu"), "numpy", ("numba",), "pip install numba",
                "fused, parallel Numba CPU kernels"),
        Backend("triton", ("torch_cuda",), "torch", ("triton", "torch"), "pip install 'dlcore[triton]'",
                "Triton GPU kernels on torch tensors"),
        Backend("cupy", ("cupy", "torch_cuda"), "cupy", ("cupy",), "pip install cupy-cuda13x (or the build for your CUDA)",
                "CuPy RawKernels and cuBLAS on CuPy arrays"),
    )
}

# 'auto' preference per array kind, best first.
AUTO_ORDER = {
    "numpy": ("numba", "numpy"),
    "torch_cpu": ("numba", "numpy"),
    "torch_cuda": ("triton", "cupy"),
    "cupy": ("cupy", "triton"),
}


@dataclass(frozen=True)
class Op:
    name: str
    module: str  # kernels/<backend>/<module>.py
    forward: str
    backward: str | None


OPS = {
    op.name: op
    for op in (
        Op("matmul", "matmul", "matmul", "matmul_backward"),
        Op("linear", "matmul", "linear", "linear_backward"),
        Op("linear_act", "linear_act", "linear_act_forward", "linear_act_backward"),
        Op("softmax", "softmax", "softmax_forward", "softmax_backward"),
        Op("log_softmax", "softmax", "log_softmax_forward", "log_softmax_backward"),
        Op("scaled_dot_product_attention", "attention", "attention_forward", "attention_backward"),
        Op("cross_entropy", "cross_entropy", "cross_entropy_forward", "cross_entropy_backward"),
        Op("binary_cross_entropy_with_logits", "bce", "bce_with_logits_forward", "bce_with_logits_backward"),
        Op("mse_loss", "mse", "mse_forward", "mse_backward"),
        Op("layer_norm", "layer_norm", "layer_norm_forward", "layer_norm_backward"),
        Op("gelu", "activations", "gelu_forward", "gelu_backward"),
        Op("relu", "activations", "relu_forward", "relu_backward"),
        Op("silu", "activations", "silu_forward", "silu_backward"),
        Op("sgd_", "optimizers", "sgd_step", None),
        Op("adam_", "optimizers", "adam_step", None),
        Op("adamw_", "optimizers", "adam_step", None),
    )
}


# ----------------------------------------------------------------------------------------------------
# Preferences: set_backend (process-wide) and backend() (scoped, context-local).
_global_preference = "auto"
_scoped_preference: contextvars.ContextVar = contextvars.ContextVar("dlcore_backend", default=None)


def _check_name(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"backend name must be a string, got {type(name).__name__}")
    name = name.strip().lower()
    if name != "auto" and name not in BACKENDS:
        raise BackendError(f"unknown backend '{name}'; known: 'auto', {', '.join(map(repr, BACKENDS))}")
    return name


def set_backend(name: str) -> None:
    """Set the process-wide backend preference ('auto', 'numpy', 'numba', 'triton' or 'cupy')."""
    global _global_preference
    name = _check_name(name)
    if name != "auto":
        why = BACKENDS[name].missing()
        if why:
            raise BackendError(f"backend '{name}' is not available: {why}")
    _global_preference = name


def get_backend() -> str:
    """The active preference: the innermost `backend` block, else `set_backend`'s, else 'auto'."""
    scoped = _scoped_preference.get()
    return scoped if scoped is not None else _global_preference


@contextlib.contextmanager
def backend(name: str):
    """Prefer ``name`` inside a ``with`` block (context-local: threads and asyncio tasks do not share it)."""
    name = _check_name(name)
    if name != "auto":
        why = BACKENDS[name].missing()
        if why:
            raise BackendError(f"backend '{name}' is not available: {why}")
    token = _scoped_preference.set(name)
    try:
        yield
    finally:
        _scoped_preference.reset(token)


def available_backends() -> list:
    """Backends that can run on this machine now, in registry order."""
    return [name for name, b in BACKENDS.items() if b.missing() is None]


# ----------------------------------------------------------------------------------------------------
# Resolution.
@dataclass
class Choice:
    """The outcome of dispatch for one call: which backend, which kernel functions, and why."""

    op: Op
    backend: Backend
    kind: str
    module: object
    reason: str
    notes: list = field(default_factory=list)

    @property
    def forward(self):
        return getattr(self.module, self.op.forward)

    @property
    def backward(self):
        return getattr(self.module, self.op.backward)


_module_cache: dict = {}
_warned: set = set()


def kernel_module(backend_name: str, module: str):
    """Import ``dlcore.kernels.<backend>.<module>`` (cached); None when that file does not exist."""
    key = (backend_name, module)
    if key not in _module_cache:
        full = f"dlcore.kernels.{backend_name}.{module}"
        try:
            spec = importlib.util.find_spec(full)
        except ModuleNotFoundError:
            spec = None
        _module_cache[key] = importlib.import_module(full) if spec is not None else None
    return _module_cache[key]


def implements(backend_name: str, op_name: str) -> bool:
    op = OPS[op_name]
    mod = kernel_module(backend_name, op.module)
    names = [op.forward] + ([op.backward] if op.backward else [])
    return mod is not None and all(callable(getattr(mod, n, None)) for n in names)


@functools.cache
def _env_var(op_name: str) -> str:
    return "DLCORE_BACKEND_" + op_name.strip("_").upper()


def _env_lookup():
    """``getenv(name)`` reading the dict behind ``os.environ`` (~0.1 us; ``os.environ.get`` encodes the key
    and wraps the mapping: ~2 us, and every op call asks three times). Same values: ``os.environ[...] = v``
    and ``del`` update that dict. Where CPython's layout differs, plain ``os.environ.get``."""
    data, encode, decode = (getattr(os.environ, a, None) for a in ("_data", "encodekey", "decodevalue"))
    if not isinstance(data, dict) or encode is None or decode is None:
        return os.environ.get
    keys: dict = {}

    def getenv(name: str):
        key = keys.get(name)
        if key is None:
            key = keys[name] = encode(name)
        value = data.get(key)
        return None if value is None else decode(value)

    return getenv


_getenv = _env_lookup()


def requested(op_name: str, explicit: str | None) -> tuple:
    """(backend name or 'auto', where the request came from), by the documented precedence."""
    if explicit is not None:
        return _check_name(explicit), "the backend= argument"
    per_op = _getenv(_env_var(op_name))
    if per_op:
        return _check_name(per_op), f"${_env_var(op_name)}"
    glob = _getenv("DLCORE_BACKEND")
    if glob:
        return _check_name(glob), "$DLCORE_BACKEND"
    scoped = _scoped_preference.get()
    if scoped is not None:
        return scoped, "the enclosing `with dlcore.backend(...)` block"
    if _global_preference != "auto":
        return _global_preference, "dlcore.set_backend()"
    return "auto", "the default"


# Resolutions that ended without a note (the usual case), so the next call with the same request skips the
# availability probes and the reason's formatting (~10 us of every op call). The key holds everything the
# answer depends on that can change while a process runs: the request and where it came from, the array kind,
# TRITON_INTERPRET, and the probes `Backend.missing` and `implements` themselves (tests replace them to
# pretend a backend or a kernel is or is not there).
_resolved: dict = {}


def resolve(op_name: str, kind: str, explicit: str | None = None) -> Choice:
    """Pick the backend for ``op_name`` on arrays of ``kind``; raise BackendError if none can run it."""
    name, source = requested(op_name, explicit)
    key = (op_name, kind, name, source, _getenv("TRITON_INTERPRET"), Backend.missing, implements)
    choice = _resolved.get(key)
    if choice is None:
        choice = _resolve(op_name, kind, name, source)
        if not choice.notes:
            if len(_resolved) > 1024:
                _resolved.clear()
            _resolved[key] = choice
    return choice


def _resolve(op_name: str, kind: str, name: str, source: str) -> Choice:
    op = OPS[op_name]
    notes = []
    if name != "auto":
        b = BACKENDS[name]
        why = b.missing()
        if why:
            raise BackendError(f"{op_name}: backend '{name}' (requested by {source}) is not available: {why}")
        if kind not in b.accepted_kinds():
            raise BackendError(
                f"{op_name}: backend '{name}' (requested by {source}) cannot take {_arrays._pretty(kind)}s; "
                f"it computes on {', '.join(_arrays._pretty(k) + 's' for k in b.accepted_kinds())}"
            )
        if implements(name, op_name):
            return Choice(op, b, kind, kernel_module(name, op.module), f"requested by {source}", notes)
        notes.append(f"backend '{name}' (requested by {source}) has no {op_name} kernel; fell back to auto")
        if (name, op_name) not in _warned:
            _warned.add((name, op_name))
            warnings.warn(notes[-1], BackendFallbackWarning, stacklevel=4)
    skipped = []
    for cand in AUTO_ORDER[kind]:
        b = BACKENDS[cand]
        why = b.missing()
        if why:
            skipped.append(f"{cand}: {why}")
            continue
        if not implements(cand, op_name):
            skipped.append(f"{cand}: no {op_name} kernel")
            continue
        if skipped:
            notes.extend(skipped)
            key = ("auto", cand, op_name)
            if key not in _warned:
                _warned.add(key)
                warnings.warn(f"{op_name} on {_arrays._pretty(kind)}s runs on '{cand}' because "
                              + "; ".join(skipped), BackendFallbackWarning, stacklevel=4)
        order = " > ".join(AUTO_ORDER[kind])
        reason = f"auto: first available of [{order}] for {_arrays._pretty(kind)}s"
        return Choice(op, b, kind, kernel_module(cand, op.module), reason, notes)
    raise BackendError(
        f"{op_name}: no backend can run on {_arrays._pretty(kind)}s here ("
        + "; ".join(skipped) + ")"
    )


@dataclass
class Explanation:
    """What `dlcore.explain` returns; prints as a short paragraph."""

    op: str
    backend: str
    function: str
    arrays: str
    reason: str
    notes: list

    def __str__(self) -> str:
        lines = [f"{self.op}({self.arrays}) -> backend '{self.backend}': {self.function}", f"  why: {self.reason}"]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    __repr__ = __str__


def describe_arrays(named: dict) -> str:
    parts = []
    for name, a in named.items():
        if a is None:
            continue
        shape = tuple(a.shape)
        parts.append(f"{name}: {_arrays._pretty(_arrays.kind_of(a))} {_arrays.dtype_name(a)} {shape}")
    return ", ".join(parts)


def explain_choice(choice: Choice, named: dict) -> Explanation:
    notes = list(choice.notes)
    extra = getattr(choice.module, "EXPLAIN", {}).get(choice.op.name)
    if callable(extra):  # a kernel module may explain per call (e.g. which BLAS runs for these shapes)
        extra = extra(named)
    if extra:
        notes.append(extra)
    fn = f"dlcore.kernels.{choice.backend.name}.{choice.op.module}.{choice.op.forward}"
    return Explanation(choice.op.name, choice.backend.name, fn, describe_arrays(named), choice.reason, notes)


def _cuda_available() -> bool:
    """Whether torch sees a CUDA GPU; answers without importing torch on machines with no NVIDIA driver."""
    import sys

    if "torch" not in sys.modules and not (os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia")):
        return False
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def _cupy_has_device() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - any CUDA runtime failure means "no usable device"
        return False
