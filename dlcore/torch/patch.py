"""Route torch.nn.functional's softmax, attention, losses, layer_norm and gelu to dlcore's fused kernels.

    with dlcore.torch.patch() as p:         # for the duration of the block, process-wide
        loss = model(x, labels=y).loss
    loss.backward()                          # dlcore ops built their own autograd nodes: no patch needed
    print(p.stats["scaled_dot_product_attention"])   # {'dlcore': 2, 'torch': 0, 'reasons': {}}

    dlcore.torch.patch(model)                # every model(...) call runs with the routing on
    dlcore.torch.unpatch(model)

Mechanism: the eight names in `PATCHED_FUNCTIONS` are replaced by wrappers as *attributes of the module*
``torch.nn.functional`` while at least one patch is active (a process-wide count, so nesting is fine and
the originals come back when the outermost one exits, exceptions included). Everything that looks these
names up at call time is routed: ``F.softmax(...)`` / ``torch.nn.functional.xxx(...)`` /
``nn.functional.xxx(...)`` in user code and in HF transformers, ``nn.Softmax``, ``nn.LayerNorm``,
``nn.GELU``, ``nn.CrossEntropyLoss``, ``nn.MSELoss``, ``nn.BCEWithLogitsLoss``, and the ``softmax`` /
``scaled_dot_product_attention`` calls inside ``F.multi_head_attention_forward`` (which is how
``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` attend in training mode). Not routed:

* ``torch.softmax``, ``Tensor.softmax``, ``torch.layer_norm`` and other non-``F`` spellings;
* names bound before the patch: ``from torch.nn.functional import softmax``, a function stored at
  construction time (``TransformerEncoderLayer(activation="gelu")`` keeps ``F.gelu``; HF's
  ``GELUActivation`` / ``GELUTanh`` keep ``nn.functional.gelu``; a model built *inside* a patch keeps the
  wrapper, which routes whenever a patch is active and otherwise calls torch). ``patch(model)`` rebinds
  those stored in a submodule's own attributes (``layer.activation``) to the wrappers, and ``unpatch``
  puts torch's functions back; the ``with patch():`` form leaves objects alone;
* torch's fused eval-mode fast paths (``torch._native_multi_head_attention``,
  ``torch._transformer_encoder_layer_fwd``), which never call ``F``.

Measured by tests/dlcore/torch/test_patch.py (torch 2.13, transformers 5.x), per forward pass:

* ``nn.TransformerEncoder`` (train mode, or any mode with grad enabled and the fast path off): one
  ``scaled_dot_product_attention`` per layer (via ``F.multi_head_attention_forward``, masks and
  ``is_causal`` included) and two ``layer_norm`` per layer. Its activation (``F.relu`` by default) is
  not one of the eight. In eval mode under ``torch.no_grad()`` torch takes its fused fast path: nothing
  is routed.
* ``nn.MultiheadAttention`` called directly with ``need_weights=True`` (its default): ``softmax``.
* HF ``GPT2LMHeadModel`` with ``attn_implementation='sdpa'``: one ``scaled_dot_product_attention`` per
  layer (``is_causal=True``, or a boolean mask when an ``attention_mask`` is passed), ``2 * n_layer + 1``
  ``layer_norm`` and one ``cross_entropy`` (the loss); with ``'eager'`` attention, ``softmax`` instead.
  Its default ``gelu_new`` activation is written out in torch ops, so ``gelu`` is not called.

Each wrapper takes torch's full signature and runs dlcore only for arguments dlcore implements exactly:
strided float32/float64 CPU tensors (and CUDA tensors when a dlcore GPU backend is installed), of one
dtype and device, outside torch.compile / jit tracing / functorch transforms / forward-mode AD / autocast /
tensor subclasses, with no argument dlcore lacks (``dropout_p > 0``, ``enable_gqa``, ``weight=``,
probability targets, ``dtype=``, legacy ``size_average``/``reduce``, a mask or ``pos_weight`` that needs a
gradient, ...). Anything else goes to torch's function unchanged: never an error torch would not raise,
never an ignored argument. `patch_stats` counts both outcomes per function, with the fallback reasons.

Limits: dlcore's backward kernels are first-order. ``torch.autograd.grad(..., create_graph=True)`` through
a routed call gives a gradient with no graph of its own (or raises torch's once_differentiable error), so
do not patch code that needs second derivatives (gradient penalties, MAML). The patch is process-wide while
active (other threads are routed too); under ``torch.compile`` and ``torch.jit.trace`` the wrappers call
torch's functions (counted as fallbacks), and ``torch.jit.script`` should not be run inside a patch.
"""
from __future__ import annotations

import copy
import threading
import warnings

import torch
import torch.nn.functional as F

from dlcore import _arrays, _dispatch, ops

PATCHED_FUNCTIONS = ("softmax", "log_softmax", "scaled_dot_product_attention", "cross_entropy",
                     "binary_cross_entropy_with_logits", "mse_loss", "layer_norm", "gelu")

# dlcore's argument checks raise these for inputs it does not take; the call then goes to torch instead
_REJECTED = (TypeError, ValueError, IndexError, NotImplementedError, _dispatch.BackendError)

_lock = threading.RLock()
_depth = 0  # active patches (context blocks + patched modules running forward), process-wide
_active: list = []  # Patch objects inside their `with` block, each keeping its own stats
_tls = threading.local()  # per-thread count of forward calls entered by patched modules


# ------------------------------------------------------------------------------------------------
# Statistics.
def _empty_stats() -> dict:
    return {name: {"dlcore": 0, "torch": 0, "reasons": {}} for name in PATCHED_FUNCTIONS}


_stats = _empty_stats()


def _add(stats: dict, name: str, reason: str | None) -> None:
    entry = stats[name]
    if reason is None:
        entry["dlcore"] += 1
    else:
        entry["torch"] += 1
        entry["reasons"][reason] = entry["reasons"].get(reason, 0) + 1


def _record(name: str, reason: str | None) -> None:
    with _lock:
        _add(_stats, name, reason)
        for ctx in _active:
            _add(ctx._stats, name, reason)


def patch_stats() -> dict:
    """Per-function counts of patched calls since import (or the last `reset_patch_stats`).

    Returns:
        ``{name: {'dlcore': n_routed, 'torch': n_fallen_back, 'reasons': {reason: count}}}`` for every
        name in `PATCHED_FUNCTIONS` (a copy; zero counts included). Calls made while no patch is active are
        not counted.

    Example:
        >>> with dlcore.torch.patch():
        ...     F.softmax(torch.randn(2, 3), dim=-1)
        >>> dlcore.torch.patch_stats()["softmax"]
        {'dlcore': 1, 'torch': 0, 'reasons': {}}
    """
    with _lock:
        return copy.deepcopy(_stats)


def reset_patch_stats() -> None:
    """Set every count returned by `patch_stats` back to zero."""
    global _stats
    with _lock:
        _stats = _empty_stats()


# ------------------------------------------------------------------------------------------------
# Installing and removing the wrappers.
def _routing() -> bool:
    return _depth > 0


def _enter(ctx=None) -> None:
    global _depth
    with _lock:
        if _depth == 0:
            _install()
        _depth += 1
        if ctx is not None:
            _active.append(ctx)


def _exit(ctx=None) -> None:
    global _depth
    with _lock:
        if ctx is not None:
            for i in range(len(_active) - 1, -1, -1):
                if _active[i] is ctx:
                    del _active[i]
                    break
        _depth -= 1
        if _depth == 0:
            _uninstall()


def _install() -> None:
    for name in PATCHED_FUNCTIONS:
        current = getattr(F, name)
        if current is not _WRAPPERS[name]:
            _originals[name] = current  # fall back to whatever was there (torch's, or another patch's)
        setattr(F, name, _WRAPPERS[name])


def _uninstall() -> None:
    for name in PATCHED_FUNCTIONS:
        if getattr(F, name) is _WRAPPERS[name]:  # leave it alone if someone patched over us meanwhile
            setattr(F, name, _originals[name])


class Patch:
    """What ``dlcore.torch.patch()`` returns: a re-entrant context manager that routes the functions.

    Attributes:
        stats: counts of the calls made while this object's ``with`` block was active, in the layout of
            `patch_stats`.
    """

    def __init__(self):
        self._stats = _empty_stats()

    def __enter__(self):  # -> Patch
        _enter(self)
        return self

    def __exit__(self, *exc) -> bool:
        _exit(self)
        return False

    @property
    def stats(self) -> dict:
        with _lock:
            return copy.deepcopy(self._stats)

    def __repr__(self) -> str:
        routed = {n: s["dlcore"] for n, s in self._stats.items() if s["dlcore"] or s["torch"]}
        return f"<dlcore.torch.patch routed={routed}>"


def _enter_hook(module, args):
    counts = _tls.__dict__.setdefault("counts", {})
    counts[id(module)] = counts.get(id(module), 0) + 1
    _enter()


def _exit_hook(module, args, output):
    counts = _tls.__dict__.setdefault("counts", {})
    n = counts.get(id(module), 0)
    if n > 0:  # balanced even when an earlier pre-hook raised before ours ran
        if n == 1:
            del counts[id(module)]
        else:
            counts[id(module)] = n - 1
        _exit()


def patch(model=None):
    """Route torch.nn.functional's softmax, log_softmax, scaled_dot_product_attention, cross_entropy,
    binary_cross_entropy_with_logits, mse_loss, layer_norm and gelu to dlcore.

    Args:
        model: optional ``torch.nn.Module``. Without it, returns a context manager (see `Patch`) that
            routes the functions for the duration of its ``with`` block, restoring torch's functions after,
            even on exceptions; blocks nest. With it, registers forward hooks so that every ``model(...)``
            call runs with the routing active (the backward pass needs no routing: dlcore's ops built their
            own autograd nodes), and returns the model. Calling it twice on one model is harmless.

    Returns:
        A `Patch` context manager, or ``model``.

    Example:
        >>> with dlcore.torch.patch() as p:
        ...     loss = F.cross_entropy(model(x), y)
        >>> loss.backward(); p.stats["cross_entropy"]["dlcore"]
        1
        >>> model = dlcore.torch.patch(model)      # routed on every forward; dlcore.torch.unpatch(model)
    """
    if model is None:
        return Patch()
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"dlcore.torch.patch: expected a torch.nn.Module or nothing, got {type(model).__name__}")
    if getattr(model, "_dlcore_patch_handles", None) is None:
        pre = model.register_forward_pre_hook(_enter_hook, prepend=True)
        post = model.register_forward_hook(_exit_hook, always_call=True)
        model._dlcore_patch_handles = (pre, post)
        model._dlcore_patch_rebound = _rebind_stored_functions(model)
    return model


def _rebind_stored_functions(model) -> list:
    """Point submodule attributes that hold one of torch's patched functions (``TransformerEncoderLayer``
    keeps ``F.gelu`` as ``self.activation``) at the wrapper, which calls torch's function whenever no patch
    is routing. Returns ``[(module, attribute, original, name), ...]`` for `unpatch`."""
    originals = {id(f): name for name, f in _originals.items()}
    rebound = []
    for module in model.modules():
        for attr, value in list(vars(module).items()):
            name = originals.get(id(value))
            if name is not None and callable(value) and not attr.startswith("_"):
                setattr(module, attr, _WRAPPERS[name])
                rebound.append((module, attr, value, name))
    return rebound


def unpatch(model):
    """Undo ``dlcore.torch.patch(model)``: remove its forward hooks; a model that is not patched is left as is.

    Args:
        model: a ``torch.nn.Module``.

    Returns:
        ``model``.
    """
    handles = getattr(model, "_dlcore_patch_handles", None)
    if handles is not None:
        for h in handles:
            h.remove()
        del model._dlcore_patch_handles
        for module, attr, original, name in getattr(model, "_dlcore_patch_rebound", ()):
            if getattr(module, attr, None) is _WRAPPERS[name]:  # unless something replaced it since
                setattr(module, attr, original)
        model.__dict__.pop("_dlcore_patch_rebound", None)
    return model


# ------------------------------------------------------------------------------------------------
# Deciding whether dlcore can take a call.
def _autocast_on(device_type: str) -> bool:
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # torch < 2.4 takes no argument
        return bool(torch.is_autocast_enabled()) if device_type == "cuda" else bool(torch.is_autocast_cpu_enabled())


def _only_device_modes() -> bool:
    """True when every active torch-function mode is a ``with torch.device(...)`` block (factories only)."""
    try:
        from torch.overrides import _get_current_function_mode_stack
        from torch.utils._device import DeviceContext

        return all(isinstance(m, DeviceContext) for m in _get_current_function_mode_stack())
    except (ImportError, AttributeError):
        return False


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    check = getattr(compiler, "is_compiling", None)  # torch >= 2.3
    if check is None:
        check = getattr(getattr(torch, "_dynamo", None), "is_compiling", None)
    return bool(check()) if check is not None else False


def _functorch_wrapped(t) -> bool:
    check = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)
    return bool(check(t)) if check is not None else False


def _unsupported(op: str, floats, others=()) -> str | None:
    """Why dlcore cannot run ``op`` on these tensors (None when it can).

    ``floats`` must be floating tensors of one dtype that dlcore's backend takes; ``others`` (targets,
    masks) only need to be plain tensors on the same device. None entries are skipped.
    """
    if _is_compiling():
        return "torch.compile tracing"
    if torch.jit.is_tracing():
        return "torch.jit tracing"
    if getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0:
        return "forward-mode AD active"
    tensors = [t for t in (*floats, *others) if t is not None]
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            return f"non-tensor argument ({type(t).__name__})"
    if torch.overrides.has_torch_function(tensors) and (
            any(type(t) not in (torch.Tensor, torch.nn.Parameter) for t in tensors) or not _only_device_modes()):
        return "tensor subclass or __torch_function__ mode"
    for t in tensors:
        if t.layout != torch.strided or t.is_nested:
            return "sparse or nested tensor"
        if _functorch_wrapped(t):
            return "functorch transform (vmap/grad/jvp)"
        if any(getattr(t, "names", ()) or ()):  # named tensors (gone from recent torch)
            return "named tensor"
    device = tensors[0].device
    if any(t.device != device for t in tensors[1:]):
        return "tensors on different devices"
    if device.type == "cpu":
        kind = "torch_cpu"
    elif device.type == "cuda":
        kind = "torch_cuda"
    else:
        return f"{device.type} device"
    if _autocast_on(device.type):
        return "autocast enabled"
    try:
        choice = _dispatch.resolve(op, kind)
    except _dispatch.BackendError:
        return f"no dlcore backend for {device.type} tensors"
    allowed = _arrays.CPU_FLOAT_DTYPES if choice.backend.native == "numpy" else _arrays.FLOAT_DTYPES
    dtypes = {t.dtype for t in floats if t is not None}
    if len(dtypes) > 1:
        return "mixed dtypes"
    (dtype,) = dtypes
    name = str(dtype).replace("torch.", "")
    if name not in allowed:
        return f"dtype {name} on {device.type}"
    return None


def _needs_grad(t) -> bool:
    return t is not None and isinstance(t, torch.Tensor) and t.requires_grad and torch.is_grad_enabled()


def _rejected(e) -> str:
    return f"dlcore rejected the arguments ({type(e).__name__}: {str(e)[:80]})"


def _route(name, run_dlcore, run_torch):
    """Run dlcore; if its argument checks reject the call, run torch's function instead. Count either way."""
    try:
        out = run_dlcore()
    except _REJECTED as e:
        _record(name, _rejected(e))
        return run_torch()
    _record(name, None)
    return out


def _fallback(name, reason, run_torch):
    _record(name, reason)
    return run_torch()


def _implicit_softmax_dim(name: str, ndim: int, stacklevel: int) -> int:
    # torch.nn.functional._get_softmax_dim: same warning, same choice
    warnings.warn(f"Implicit dimension choice for {name} has been deprecated. "
                  "Change the call to include dim=X as an argument.", stacklevel=stacklevel)
    return 0 if ndim in (0, 1, 3) else 1


# ------------------------------------------------------------------------------------------------
# The wrappers: torch's signatures, dlcore where it applies, torch's function otherwise.
def _softmax_like(name, dlcore_fn, input, dim, _stacklevel, dtype):
    orig = _originals[name]
    if not _routing():  # a reference kept from inside a patch, called after it ended
        return orig(input, dim, _stacklevel + 2, dtype=dtype)
    why = _unsupported(name, (input,))
    if why is None and dtype is not None:
        why = "dtype= given"
    if why is None and dim is not None and (not isinstance(dim, int) or isinstance(dim, bool)):
        why = f"dim of type {type(dim).__name__}"
    if why is not None:
        return _fallback(name, why, lambda: orig(input, dim, _stacklevel + 4, dtype=dtype))
    if dim is None:
        dim = _implicit_softmax_dim(name, input.dim(), _stacklevel + 1)
    return _route(name, lambda: dlcore_fn(input, dim), lambda: orig(input, dim))


def softmax(input, dim=None, _stacklevel=3, dtype=None):
    """``torch.nn.functional.softmax`` routed to `dlcore.ops.softmax` (torch's when ``dtype=`` is given)."""
    return _softmax_like("softmax", ops.softmax, input, dim, _stacklevel, dtype)


def log_softmax(input, dim=None, _stacklevel=3, dtype=None):
    """``torch.nn.functional.log_softmax`` routed to `dlcore.ops.log_softmax` (torch's when ``dtype=`` is given)."""
    return _softmax_like("log_softmax", ops.log_softmax, input, dim, _stacklevel, dtype)


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None,
                                 enable_gqa=False):
    """``torch.nn.functional.scaled_dot_product_attention`` routed to dlcore's fused attention.

    torch's function runs instead for ``dropout_p > 0``, ``enable_gqa=True``, a mask together with
    ``is_causal``, a float mask of another dtype or one that needs a gradient.
    """
    name = "scaled_dot_product_attention"
    orig = _originals[name]
    extra = {}
    if scale is not None:
        extra["scale"] = scale
    if enable_gqa:
        extra["enable_gqa"] = enable_gqa

    def run_torch():
        return orig(query, key, value, attn_mask, dropout_p, is_causal, **extra)

    if not _routing():
        return run_torch()
    why = _unsupported(name, (query, key, value), (attn_mask,))
    if why is None:
        if dropout_p != 0.0:
            why = "dropout_p > 0"
        elif enable_gqa:
            why = "enable_gqa=True"
        elif attn_mask is not None and is_causal:
            why = "attn_mask with is_causal=True"
        elif attn_mask is not None and attn_mask.dtype not in (torch.bool, query.dtype):
            why = f"attn_mask dtype {attn_mask.dtype}"
        elif _needs_grad(attn_mask):
            why = "attn_mask requires grad"
    if why is not None:
        return _fallback(name, why, run_torch)
    return _route(name, lambda: ops.scaled_dot_product_attention(query, key, value, attn_mask, bool(is_causal), scale),
                  run_torch)


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
                  label_smoothing=0.0):
    """``torch.nn.functional.cross_entropy`` routed to dlcore's fused loss for int64 class-index targets.

    torch's function runs instead for ``weight=``, legacy ``size_average``/``reduce``, and probability
    (floating-point) targets.
    """
    name = "cross_entropy"
    orig = _originals[name]

    def run_torch():
        return orig(input, target, weight, size_average, ignore_index, reduce, reduction, label_smoothing)

    if not _routing():
        return run_torch()
    why = _unsupported(name, (input,), (target, weight))
    if why is None:
        if weight is not None:
            why = "weight= given"
        elif size_average is not None or reduce is not None:
            why = "legacy size_average/reduce"
        elif target.dtype.is_floating_point:
            why = "probability targets"
        elif target.dtype != torch.int64:
            why = f"target dtype {target.dtype}"
    if why is not None:
        return _fallback(name, why, run_torch)
    return _route(name, lambda: ops.cross_entropy(input, target, ignore_index, reduction, label_smoothing), run_torch)


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None, reduce=None, reduction="mean",
                                     pos_weight=None):
    """``torch.nn.functional.binary_cross_entropy_with_logits`` routed to dlcore's fused loss.

    torch's function runs instead for ``weight=``, legacy ``size_average``/``reduce``, and a ``pos_weight``
    that needs a gradient.
    """
    name = "binary_cross_entropy_with_logits"
    orig = _originals[name]

    def run_torch():
        return orig(input, target, weight, size_average, reduce, reduction, pos_weight)

    if not _routing():
        return run_torch()
    why = _unsupported(name, (input, target, pos_weight), (weight,))
    if why is None:
        if weight is not None:
            why = "weight= given"
        elif size_average is not None or reduce is not None:
            why = "legacy size_average/reduce"
        elif _needs_grad(pos_weight):
            why = "pos_weight requires grad"
    if why is not None:
        return _fallback(name, why, run_torch)
    return _route(name, lambda: ops.binary_cross_entropy_with_logits(input, target, pos_weight, reduction), run_torch)


def mse_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    """``torch.nn.functional.mse_loss`` routed to dlcore's fused loss (torch's for ``weight=`` or legacy args)."""
    name = "mse_loss"
    orig = _originals[name]
    extra = {"weight": weight} if weight is not None else {}

    def run_torch():
        return orig(input, target, size_average, reduce, reduction, **extra)

    if not _routing():
        return run_torch()
    why = _unsupported(name, (input, target), (weight,))
    if why is None:
        if weight is not None:
            why = "weight= given"
        elif size_average is not None or reduce is not None:
            why = "legacy size_average/reduce"
    if why is not None:
        return _fallback(name, why, run_torch)
    try:
        out = ops.mse_loss(input, target, reduction)
    except _REJECTED as e:
        _record(name, _rejected(e))
        return run_torch()
    _record(name, None)
    if target.size() != input.size():  # torch's warning, word for word
        warnings.warn(f"Using a target size ({target.size()}) that is different to the input size ({input.size()}). "
                      "This will likely lead to incorrect results due to broadcasting. "
                      "Please ensure they have the same size.", stacklevel=2)
    return out


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """``torch.nn.functional.layer_norm`` routed to dlcore's fused layer norm."""
    name = "layer_norm"
    orig = _originals[name]

    def run_torch():
        return orig(input, normalized_shape, weight, bias, eps)

    if not _routing():
        return run_torch()
    why = _unsupported(name, (input, weight, bias))
    if why is not None:
        return _fallback(name, why, run_torch)
    return _route(name, lambda: ops.layer_norm(input, normalized_shape, weight, bias, eps), run_torch)


def gelu(input, approximate="none"):
    """``torch.nn.functional.gelu`` routed to dlcore's gelu (both ``'none'`` and ``'tanh'`` forms)."""
    name = "gelu"
    orig = _originals[name]

    def run_torch():
        return orig(input, approximate=approximate)

    if not _routing():
        return run_torch()
    why = _unsupported(name, (input,))
    if why is None and approximate not in ("none", "tanh"):
        why = f"approximate={approximate!r}"
    if why is not None:
        return _fallback(name, why, run_torch)
    return _route(name, lambda: ops.gelu(input, approximate), run_torch)


_WRAPPERS = {name: globals()[name] for name in PATCHED_FUNCTIONS}
for _w in _WRAPPERS.values():
    _w._dlcore_wrapper = True
_originals = {}
for _name in PATCHED_FUNCTIONS:
    _f = getattr(F, _name)
    if getattr(_f, "_dlcore_wrapper", False):  # this module was reloaded while a patch was active
        _f = _f.__globals__["_originals"][_name]
    _originals[_name] = _f
