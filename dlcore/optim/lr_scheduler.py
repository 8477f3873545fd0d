"""Learning-rate schedules: call ``scheduler.step()`` once per epoch (or per batch) after ``optimizer.step()``."""
from __future__ import annotations

import math


class _Scheduler:
    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.last_epoch = 0
        self._apply()

    def factor(self, epoch):
        raise NotImplementedError

    def _apply(self):
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = self.lr_at(base, self.last_epoch)

    def lr_at(self, base, epoch):
        return base * self.factor(epoch)

    def step(self):
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self):
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self):
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state):
        self.last_epoch, self.base_lrs = state["last_epoch"], list(state["base_lrs"])
        self._apply()


class StepLR(_Scheduler):
    """Multiply the lr by ``gamma`` every ``step_size`` steps."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer)

    def factor(self, epoch):
        return self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(_Scheduler):
    """Cosine from the base lr down to ``eta_min`` over ``T_max`` steps, rising again after (torch's form)."""

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self.T_max, self.eta_min = T_max, eta_min
        super().__init__(optimizer)

    def lr_at(self, base, epoch):
        return self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2


class LinearWarmup(_Scheduler):
    """Ramp the lr linearly from ``start_factor * base`` to ``base`` over ``warmup_steps``, then hold it
    (or hand over to ``after``, another schedule, counting its steps from the end of warm-up)."""

    def __init__(self, optimizer, warmup_steps, start_factor=0.0, after=None):
        self.warmup_steps, self.start_factor, self.after = warmup_steps, start_factor, after
        super().__init__(optimizer)

    def lr_at(self, base, epoch):
        if epoch < self.warmup_steps:
            return base * (self.start_factor + (1 - self.start_factor) * epoch / self.warmup_steps)
        if self.after is not None:
            return self.after.lr_at(base, epoch - self.warmup_steps)
        return base
