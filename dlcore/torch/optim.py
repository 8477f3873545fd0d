"""torch.optim drop-ins whose step runs dlcore's fused update kernels (dlcore.ops.sgd_ / adam_ / adamw_).

`AdamW`, `Adam` and `SGD` subclass torch's own classes, so they take the same constructor arguments, pass
``isinstance(opt, torch.optim.AdamW)`` checks, work with LR schedulers, and keep torch's exact state layout
(``state[p] = {'step': tensor(float32), 'exp_avg', 'exp_avg_sq'}`` / ``{'momentum_buffer'}``):
``state_dict()`` from one loads into the other mid-training and the run continues with the same numbers.

Only ``step()`` changes. Each parameter with a gradient is updated by one fused kernel call instead of
torch's chain of elementwise ops; the arithmetic is torch's, operation by operation. What dlcore does not
implement runs through torch's own step instead (counted in ``opt.dlcore_stats``):

* groups with ``amsgrad``, ``maximize``, ``capturable`` or ``differentiable`` set;
* parameters dlcore cannot take: complex, float16/bfloat16 on the CPU, a CUDA tensor when no dlcore GPU
  backend (triton, cupy) is installed, a gradient of another dtype, and sparse gradients (SGD runs them
  through torch; Adam/AdamW raise torch's own error).

``foreach`` and ``fused`` choose between torch's implementations; dlcore replaces all of them, so both are
accepted, kept in ``param_groups`` (for ``state_dict`` compatibility) and otherwise ignored.
"""
from __future__ import annotations

import inspect

import torch

from dlcore import _arrays, _dispatch
from dlcore.ops import adam_, adamw_, sgd_

_TORCH_ONLY_FLAGS = ("amsgrad", "maximize", "capturable", "differentiable")


def _scalar_dtype():
    # torch.optim keeps 'step' as a float32 CPU scalar (float64 when that is the default dtype)
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _increment_version(t) -> None:
    """Mark ``t`` as modified in place, so autograd rejects graphs that saved its old value (a write
    through a NumPy view does not do it by itself)."""
    bump = getattr(torch.autograd.graph, "increment_version", None)
    if bump is not None:
        bump(t)
    else:  # older torch
        torch._C._increment_version(t)


def _gpu_backend_available() -> bool:
    return any(b in _dispatch.available_backends() for b in ("triton", "cupy"))


def _param_unsupported(p, grad, gpu_ok=None) -> str | None:
    """Why dlcore cannot step this parameter (None when it can). ``gpu_ok``: whether a dlcore GPU backend
    is installed, when the caller already knows (asking costs ~0.25 ms)."""
    if grad.is_sparse:
        return "sparse gradient"
    if p.is_complex():
        return "complex parameter"
    if grad.dtype != p.dtype or grad.device != p.device:
        return "gradient dtype or device differs from the parameter's"
    if p.device.type == "cpu":
        allowed = _arrays.CPU_FLOAT_DTYPES
    elif p.device.type == "cuda" and (gpu_ok if gpu_ok is not None else _gpu_backend_available()):
        allowed = _arrays.FLOAT_DTYPES
    else:
        return f"no dlcore backend for {p.device.type} tensors"
    if _arrays.dtype_name(p) not in allowed:
        return f"dtype {_arrays.dtype_name(p)} on {p.device.type}"
    return None


def _torch_step_function(cls):
    """torch's own (unhooked) step of ``cls``: the wrapper torch adds to run step hooks is peeled off, so
    hooks run once, around dlcore's step."""
    return inspect.unwrap(cls.step, stop=lambda f: not getattr(f, "hooked", False))


class _DlcoreStep:
    """The shared step loop; subclasses provide ``_torch_class`` and ``_update(group, p, grad)``."""

    _torch_class: type = torch.optim.Optimizer

    def _init_stats(self):
        self._step_supports_amp_scaling = False  # torch sets it for fused=True; our step takes no grad_scale
        self.dlcore_stats = {"dlcore": 0, "torch": 0, "reasons": {}}

    def _fallback_reason(self, group) -> str | None:
        for flag in _TORCH_ONLY_FLAGS:
            if group.get(flag, False):
                return f"{flag}=True"
        return None

    def _count(self, reason: str | None, n: int = 1):
        if reason is None:
            self.dlcore_stats["dlcore"] += n
        else:
            self.dlcore_stats["torch"] += n
            reasons = self.dlcore_stats["reasons"]
            reasons[reason] = reasons.get(reason, 0) + n

    def step(self, closure=None):
        """Perform one optimisation step with dlcore's fused kernels (torch's own step where noted).

        Args:
            closure: optional callable that re-evaluates the model and returns the loss.

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._backend_memo = {}  # backend resolutions of this step (see _FusedAdam._fusable)
        torch_groups = []
        gpu_ok = None
        with torch.no_grad():
            for group in self.param_groups:
                why = self._fallback_reason(group)
                if why is not None:
                    n = sum(p.grad is not None for p in group["params"])
                    if n:
                        torch_groups.append(group)
                        self._count(why, n)
                    continue
                rest, fused = [], []
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    if gpu_ok is None and p.device.type == "cuda":
                        gpu_ok = _gpu_backend_available()  # once per step, not per parameter
                    why = _param_unsupported(p, p.grad, gpu_ok)
                    if why is not None:
                        rest.append(p)
                        self._count(why)
                        continue
                    if self._fusable(group, p, p.grad):
                        fused.append(p)
                    else:
                        self._update(group, p, p.grad.detach())
                    _increment_version(p)  # as torch's in-place update would
                    self._count(None)
                if fused:
                    self._fused_update(group, fused)
                if rest:
                    torch_groups.append({**group, "params": rest})
        if torch_groups:
            self._torch_step(torch_groups)
        return loss

    def _fusable(self, group, p, grad) -> bool:
        """Whether ``p`` goes into the one fused multi-tensor launch of its group (Adam/AdamW only)."""
        return False

    def _fused_update(self, group, params):  # pragma: no cover - only called when _fusable says so
        raise NotImplementedError

    def _torch_step(self, groups):
        """Run torch's own step over ``groups`` (shallow copies or members of param_groups; state shared)."""
        saved = self.param_groups
        self.param_groups = groups
        try:
            _torch_step_function(self._torch_class)(self)
        finally:
            self.param_groups = saved


def _adam_state(state, p):
    if len(state) == 0:  # lazy init, exactly torch's layout (step lives on the CPU)
        state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state


def _adam_update(group, p, grad, state, decoupled):
    state = _adam_state(state, p)
    step_t = state["step"]
    step_t += 1
    beta1, beta2 = group["betas"]
    fn = adamw_ if decoupled else adam_
    fn(p.detach(), grad, state["exp_avg"], state["exp_avg_sq"], step=float(step_t.item()), lr=float(group["lr"]),
       beta1=float(beta1), beta2=float(beta2), eps=float(group["eps"]), weight_decay=float(group["weight_decay"]))


class _FusedAdam:
    """One fused Adam/AdamW launch per (device, dtype, step count) over a group's parameters: CPU tensors
    through the Numba multi-tensor kernel (`dlcore.optim._multi_tensor`), CUDA tensors through the Triton
    one (`dlcore.kernels.triton.optimizers.adam_multi_step`, one launch however many parameters, as torch's
    ``fused=True``). The same numbers as one `adam_`/`adamw_` call per parameter."""

    def _decoupled_for(self, group) -> bool:
        raise NotImplementedError

    def _fusable(self, group, p, grad) -> bool:
        # Runs for every parameter on every step, so each fact is asked of torch once (~4 us in all, was ~27):
        # the memory ranges of the parameter, its gradient and its two moments must not intersect.
        if p.device.type not in ("cpu", "cuda") or grad.layout != torch.strided or not (
                p.is_contiguous() and grad.is_contiguous()):
            return False
        n = p.numel()
        if n == 0 or not self._group_fusable(group):
            return False
        p0 = p.data_ptr()
        g0 = grad.data_ptr()
        ranges = [(p0, p0 + n * p.element_size())]
        state = self.state[p]
        if state:
            dtype, shape = p.dtype, p.shape
            for k in ("exp_avg", "exp_avg_sq"):
                t = state.get(k)
                if t is None or t.dtype != dtype or t.shape != shape or not t.is_contiguous():
                    return False
                t0 = t.data_ptr()
                ranges.append((t0, t0 + n * t.element_size()))
        g1 = g0 + grad.numel() * grad.element_size()
        if g0 == p0 or _any_overlap(ranges + [(g0, g1)]):
            return False
        # which backend runs adam_/adamw_ cannot change during one step(): resolved once per step (the
        # memo is emptied when step() starts)
        memo = self.__dict__.setdefault("_backend_memo", {})
        key = (p.device.type, self._decoupled_for(group))
        ok = memo.get(key)
        if ok is None:
            check = _triton_steps_torch_cuda if p.device.type == "cuda" else _numba_steps_torch_cpu
            ok = memo[key] = check(self._decoupled_for(group))
        return ok

    def _group_fusable(self, group) -> bool:
        """The group's hyperparameters are plain numbers in range (else the per-parameter op raises its own
        error). Asked once per group and step (memoised with the backend)."""
        memo = self.__dict__.setdefault("_backend_memo", {})
        key = ("group", id(group))
        ok = memo.get(key)
        if ok is None:
            b1, b2 = group["betas"]
            lr = group["lr"]
            ok = memo[key] = not torch.is_tensor(lr) and bool(
                lr >= 0 and group["eps"] >= 0 and group["weight_decay"] >= 0 and 0 <= b1 < 1 and 0 <= b2 < 1)
        return ok

    def _fused_update(self, group, params):
        from dlcore.optim import _multi_tensor as mt

        states = [_adam_state(self.state[p], p) for p in params]
        steps = [s["step"] for s in states]
        if hasattr(torch, "_foreach_add_") and len({t.dtype for t in steps}) == 1:
            torch._foreach_add_(steps, 1)  # torch's own step bump, one call for the group
            counts = torch.stack(steps).tolist()
        else:
            for t in steps:
                t += 1
            counts = [t.item() for t in steps]
        buckets = {}
        for p, n in zip(params, counts):
            buckets.setdefault((p.device, p.dtype, float(n)), []).append(p)
        beta1, beta2 = group["betas"]
        cache = self.__dict__.setdefault("_fused_cache", {})
        for (device, dtype, step), ps in buckets.items():
            states = [self.state[p] for p in ps]
            if device.type == "cuda":
                from dlcore.kernels.triton.optimizers import adam_multi_step

                # every tensor was checked by _fusable (contiguous, one dtype, same shapes, no overlaps): the
                # launch reads only addresses and sizes, so no views and no second check (~15 us a parameter)
                adam_multi_step([p for p in ps], [p.grad for p in ps], [s["exp_avg"] for s in states],
                                [s["exp_avg_sq"] for s in states], step=step, lr=float(group["lr"]),
                                beta1=float(beta1), beta2=float(beta2), eps=float(group["eps"]),
                                weight_decay=float(group["weight_decay"]), decoupled=self._decoupled_for(group),
                                validate=False)
                continue
            key = tuple((id(p), p.data_ptr(), s["exp_avg"].data_ptr(), s["exp_avg_sq"].data_ptr())
                        for p, s in zip(ps, states))
            cached = cache.get(key)
            if cached is None:
                if len(cache) > 64:
                    cache.clear()
                cached = mt.TensorLists([p.detach().numpy().reshape(-1) for p in ps],
                                        [s["exp_avg"].numpy().reshape(-1) for s in states],
                                        [s["exp_avg_sq"].numpy().reshape(-1) for s in states])
                cache[key] = cached
            hyper, flags = mt.adam_hyper(cached.params[0].dtype, step, float(group["lr"]), float(beta1), float(beta2),
                                         float(group["eps"]), float(group["weight_decay"]),
                                         self._decoupled_for(group))
            cached.step([p.grad.detach().numpy().reshape(-1) for p in ps], hyper, flags)


def _any_overlap(ranges) -> bool:
    """Whether any two of the half-open byte ranges ``[(start, end), ...]`` intersect (a handful each)."""
    for i in range(1, len(ranges)):
        a0, a1 = ranges[i]
        for b0, b1 in ranges[:i]:
            if a0 < b1 and b0 < a1:
                return True
    return False


def _triton_steps_torch_cuda(decoupled) -> bool:
    """Whether adam_/adamw_ on torch CUDA tensors resolve to the Triton backend now (selection honoured)."""
    try:
        return _dispatch.resolve("adamw_" if decoupled else "adam_", "torch_cuda", None).backend.name == "triton"
    except (_dispatch.BackendError, KeyError):
        return False


def _numba_steps_torch_cpu(decoupled) -> bool:
    """Whether adam_/adamw_ on torch CPU tensors resolve to the Numba backend now (selection honoured)."""
    try:
        return _dispatch.resolve("adamw_" if decoupled else "adam_", "torch_cpu", None).backend.name == "numba"
    except (_dispatch.BackendError, KeyError):  # the per-parameter path raises its own error
        return False


class Adam(_FusedAdam, _DlcoreStep, torch.optim.Adam):
    """`torch.optim.Adam` whose step runs dlcore's fused `adam_` kernel (one pass per parameter).

    Constructor arguments and state layout are torch's (see `torch.optim.Adam`); ``decoupled_weight_decay=True``
    gives AdamW's update. Groups with ``amsgrad``, ``maximize``, ``capturable`` or ``differentiable`` set,
    and parameters dlcore cannot take (complex, CPU float16/bfloat16, CUDA without a dlcore GPU backend),
    are stepped by torch's own implementation instead; ``foreach``/``fused`` are accepted and ignored.
    ``self.dlcore_stats`` counts parameter updates done by each and the fallback reasons.

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: learning rate (default 1e-3).
        betas: coefficients of the running averages of the gradient and its square (default (0.9, 0.999)).
        eps: added to the denominator (default 1e-8).
        weight_decay: L2 penalty added to the gradient (default 0).
        amsgrad, maximize, foreach, capturable, differentiable, fused, decoupled_weight_decay: as torch.

    Example:
        >>> opt = dlcore.torch.Adam(model.parameters(), lr=1e-3)
        >>> loss.backward(); opt.step(); opt.zero_grad()
    """

    _torch_class = torch.optim.Adam

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, **kwargs):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, **kwargs)
        self._init_stats()

    def _update(self, group, p, grad):
        _adam_update(group, p, grad, self.state[p], bool(group.get("decoupled_weight_decay", False)))

    def _decoupled_for(self, group) -> bool:
        return bool(group.get("decoupled_weight_decay", False))


class AdamW(_FusedAdam, _DlcoreStep, torch.optim.AdamW):
    """`torch.optim.AdamW` whose step runs dlcore's fused `adamw_` kernel (one pass per parameter).

    Constructor arguments and state layout are torch's (see `torch.optim.AdamW`): a ``state_dict()`` saved
    by either class loads into the other and training continues with the same numbers. Groups with
    ``amsgrad``, ``maximize``, ``capturable`` or ``differentiable`` set, and parameters dlcore cannot take
    (complex, CPU float16/bfloat16, CUDA without a dlcore GPU backend), are stepped by torch's own
    implementation instead; ``foreach``/``fused`` are accepted and ignored. ``self.dlcore_stats`` counts
    parameter updates done by each and the fallback reasons.

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: learning rate (default 1e-3).
        betas: coefficients of the running averages of the gradient and its square (default (0.9, 0.999)).
        eps: added to the denominator (default 1e-8).
        weight_decay: decoupled decay, ``param *= 1 - lr * weight_decay`` each step (default 1e-2).
        amsgrad, maximize, foreach, capturable, differentiable, fused: as torch.

    Example:
        >>> opt = dlcore.torch.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
        >>> opt.load_state_dict(torch_adamw.state_dict())   # continue a torch.optim.AdamW run
    """

    _torch_class = torch.optim.AdamW

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, **kwargs):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, **kwargs)
        self._init_stats()

    def _update(self, group, p, grad):
        _adam_update(group, p, grad, self.state[p], True)

    def _decoupled_for(self, group) -> bool:
        return True


class SGD(_DlcoreStep, torch.optim.SGD):
    """`torch.optim.SGD` whose step runs dlcore's fused `sgd_` kernel (one pass per parameter).

    Constructor arguments and state layout (``state[p] = {'momentum_buffer': tensor}`` once momentum is
    non-zero) are torch's. Groups with ``maximize`` or ``differentiable`` set, sparse gradients, and
    parameters dlcore cannot take (complex, CPU float16/bfloat16, CUDA without a dlcore GPU backend) are
    stepped by torch's own implementation instead; ``foreach``/``fused`` are accepted and ignored.
    ``self.dlcore_stats`` counts parameter updates done by each and the fallback reasons.

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: learning rate (default 1e-3).
        momentum: momentum factor (default 0).
        dampening: dampening for momentum (default 0).
        weight_decay: L2 penalty added to the gradient (default 0).
        nesterov: Nesterov momentum (needs momentum > 0 and dampening 0).
        maximize, foreach, differentiable, fused: as torch.

    Example:
        >>> opt = dlcore.torch.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    """

    _torch_class = torch.optim.SGD

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, **kwargs):
        super().__init__(params, lr, momentum, dampening, weight_decay, nesterov, **kwargs)
        self._init_stats()

    def _update(self, group, p, grad):
        momentum = float(group["momentum"])
        # torch touches self.state[p] only when momentum != 0; so do we, so state_dict()s match exactly
        buf = self.state[p].get("momentum_buffer") if momentum != 0 else None
        new = sgd_(p.detach(), grad, buf, lr=float(group["lr"]), momentum=momentum,
                   dampening=float(group["dampening"]), nesterov=bool(group["nesterov"]),
                   weight_decay=float(group["weight_decay"]))
        if momentum != 0:
            self.state[p]["momentum_buffer"] = new
