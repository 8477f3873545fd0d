"""Parameter initialisation with torch's defaults, drawn from one seedable generator (`dlcore.manual_seed`)."""
from __future__ import annotations

import math

import numpy as np

_rng = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed the generator every layer's initialisation and Dropout's default draw from."""
    global _rng
    _rng = np.random.default_rng(seed)


def generator() -> np.random.Generator:
    return _rng


def uniform(shape, bound, dtype):
    return _rng.uniform(-bound, bound, size=shape).astype(dtype)


def kaiming_uniform_default(shape, dtype):
    """torch.nn.Linear's weight init: kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    fan_in = shape[1] if len(shape) > 1 else shape[0]
    return uniform(shape, 1.0 / math.sqrt(fan_in) if fan_in else 0.0, dtype)


def xavier_uniform(shape, dtype, gain=1.0):
    fan_out, fan_in = shape[0], shape[1]
    return uniform(shape, gain * math.sqrt(6.0 / (fan_in + fan_out)), dtype)


def normal(shape, dtype, std=1.0):
    return (_rng.standard_normal(shape) * std).astype(dtype)
