"""Optimizers over Module parameters, each step one fused in-place kernel pass per parameter.

State layout matches torch.optim (per parameter index: ``step``, ``exp_avg``, ``exp_avg_sq`` or
``momentum_buffer``; ``param_groups`` with their hyperparameters), so `state_dict` can be saved with
`dlcore.save` and read back, and maps one-to-one onto torch's.
"""
from __future__ import annotations

import copy

import numpy as np

from dlcore import ops
from dlcore.autograd import math_of


class Optimizer:
    """Base class: parameter groups, per-parameter state, zero_grad and state_dict round trips."""

    defaults: dict = {}

    def __init__(self, params, defaults):
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.defaults = dict(defaults)
        self.param_groups = []
        self.state = {}
        for g in groups:
            self.add_param_group(g)

    def add_param_group(self, group):
        group = dict(group)
        group["params"] = list(group["params"])
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        self._check(group)
        self.param_groups.append(group)

    def _check(self, group):
        if group["lr"] < 0:
            raise ValueError(f"invalid learning rate {group['lr']}")

    def zero_grad(self, set_to_none=True):
        for g in self.param_groups:
            for p in g["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad *= 0

    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group, self.state.setdefault(id(p), {}))

    def _update(self, p, group, state):
        raise NotImplementedError

    def state_dict(self):
        """{'state': {index: {name: array or step}}, 'param_groups': [{hyperparameters, 'params': [index]}]}."""
        index, groups = {}, []
        for g in self.param_groups:
            gd = {k: v for k, v in g.items() if k != "params"}
            gd["params"] = []
            for p in g["params"]:
                index.setdefault(id(p), len(index))
                gd["params"].append(index[id(p)])
            groups.append(gd)
        state = {index[pid]: dict(s) for pid, s in self.state.items() if pid in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"load_state_dict: {len(groups)} param groups in the state, {len(self.param_groups)} here")
        params = [p for g in self.param_groups for p in g["params"]]
        for mine, theirs in zip(self.param_groups, groups):
            if len(mine["params"]) != len(theirs["params"]):
                raise ValueError("load_state_dict: a param group has a different number of parameters")
            mine.update({k: v for k, v in theirs.items() if k != "params"})
        self.state = {}
        for i, s in state_dict["state"].items():
            p = params[int(i)]
            m = math_of(p.data)
            entry = {}
            for k, v in s.items():
                if k == "step":
                    entry[k] = int(v)
                elif v is None:
                    entry[k] = None
                else:
                    if tuple(v.shape) != p.shape:
                        raise ValueError(f"load_state_dict: state '{k}' of parameter {i} has shape {tuple(v.shape)},"
                                         f" parameter has {p.shape}")
                    entry[k] = copy.copy(m.asarray(v, p.data)) if not hasattr(v, "copy") else v.copy()
            self.state[id(p)] = entry

    def __repr__(self):
        hp = ", ".join(f"{k}={v}" for k, v in self.defaults.items())
        return f"{type(self).__name__}({hp})"


class SGD(Optimizer):
    """SGD with momentum, dampening, Nesterov and L2 weight decay (torch.optim.SGD's numbers)."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov))

    def _update(self, p, group, state):
        buf = ops.sgd_(p.data, p.grad, state.get("momentum_buffer"), lr=group["lr"], momentum=group["momentum"],
                       dampening=group["dampening"], nesterov=group["nesterov"], weight_decay=group["weight_decay"])
        state["momentum_buffer"] = buf


class Adam(Optimizer):
    """Adam (torch.optim.Adam's numbers; L2 weight decay added to the gradient).

    NumPy parameters on the Numba backend are stepped together: one fused launch per (group, dtype, step
    count) over all of them (`dlcore.optim._multi_tensor`), bit-identical to one `dlcore.ops.adam_` /
    `adamw_` call per parameter, which is what every other parameter (torch/CuPy data, another backend,
    a non-contiguous array, a gradient overlapping its parameter) still gets.
    """

    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self._fused_cache = {}  # bucket key -> (typed lists of param/exp_avg/exp_avg_sq views, chunk table)

    def _init_state(self, p, state):
        if not state:
            m = math_of(p.data)
            state.update(step=0, exp_avg=m.zeros_like(p.data), exp_avg_sq=m.zeros_like(p.data))
        return state

    def _update(self, p, group, state):
        self._init_state(p, state)
        state["step"] += 1
        fn = ops.adamw_ if self._decoupled else ops.adam_
        fn(p.data, p.grad, state["exp_avg"], state["exp_avg_sq"], step=state["step"], lr=group["lr"],
           beta1=group["betas"][0], beta2=group["betas"][1], eps=group["eps"], weight_decay=group["weight_decay"])

    def step(self):
        fusable = _fused_backend(self._decoupled)
        for gi, group in enumerate(self.param_groups):
            buckets = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state.setdefault(id(p), {})
                if fusable and _can_fuse(p, state) and _valid_hyper(group):
                    self._init_state(p, state)
                    buckets.setdefault((p.data.dtype.str, state["step"]), []).append(p)
                else:
                    self._update(p, group, state)
            for (dtype, step), ps in buckets.items():
                self._fused_update(gi, group, ps, step + 1)

    def _fused_update(self, gi, group, ps, step):
        from dlcore.optim import _multi_tensor as mt

        states = [self.state[id(p)] for p in ps]
        key = (gi, tuple(id(p.data) for p in ps), tuple(id(s["exp_avg"]) for s in states),
               tuple(id(s["exp_avg_sq"]) for s in states))
        cached = self._fused_cache.get(key)
        if cached is None:
            if len(self._fused_cache) > 64:  # parameters were re-bound; drop stale lists
                self._fused_cache.clear()
            cached = mt.TensorLists([p.data.reshape(-1) for p in ps], [s["exp_avg"].reshape(-1) for s in states],
                                    [s["exp_avg_sq"].reshape(-1) for s in states])
            self._fused_cache[key] = cached
        beta1, beta2 = group["betas"]
        hyper, flags = mt.adam_hyper(ps[0].data.dtype, step, float(group["lr"]), float(beta1), float(beta2),
                                     float(group["eps"]), float(group["weight_decay"]), self._decoupled)
        cached.step([p.grad.reshape(-1) for p in ps], hyper, flags)
        for s in states:
            s["step"] = step


def _fused_backend(decoupled) -> bool:
    """Whether NumPy arrays' adam_/adamw_ resolve to the Numba backend now (backend selection honoured)."""
    from dlcore import _dispatch

    try:
        return _dispatch.resolve("adamw_" if decoupled else "adam_", "numpy", None).backend.name == "numba"
    except (_dispatch.BackendError, KeyError):  # let the per-parameter path raise its own error
        return False


def _can_fuse(p, state) -> bool:
    d, g = p.data, p.grad
    if not (isinstance(d, np.ndarray) and isinstance(g, np.ndarray)) or d.dtype != g.dtype:
        return False
    if d.dtype not in (np.float32, np.float64) or d.shape != g.shape or d.size == 0:
        return False
    if not (d.flags.c_contiguous and g.flags.c_contiguous) or np.may_share_memory(d, g):
        return False
    if state:
        m, v = state.get("exp_avg"), state.get("exp_avg_sq")
        for a in (m, v):
            if not (isinstance(a, np.ndarray) and a.dtype == d.dtype and a.shape == d.shape and a.flags.c_contiguous):
                return False
        if np.may_share_memory(m, v) or np.may_share_memory(m, d) or np.may_share_memory(v, d):
            return False
        if np.may_share_memory(m, g) or np.may_share_memory(v, g):
            return False
    return True


def _valid_hyper(group) -> bool:
    """Hyperparameters the per-parameter op accepts (otherwise it runs, and raises its own error)."""
    b1, b2 = group["betas"]
    return group["lr"] >= 0 and group["eps"] >= 0 and group["weight_decay"] >= 0 and 0 <= b1 < 1 and 0 <= b2 < 1


class AdamW(Adam):
    """AdamW (torch.optim.AdamW's numbers; decoupled weight decay, default 0.01)."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
