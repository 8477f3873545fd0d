"""Shared pieces of the CuPy backend's GPU tests: dtypes, tolerances, and host/device/torch conversion."""
from __future__ import annotations

import numpy as np

from tests._compare import assert_close, rand, to_numpy  # noqa: F401  (re-exported)

DTYPES = [np.float32, np.float64]

# Default tolerances against torch on the CPU in the same dtype; an op that needs wider ones says why.
TOL = {
    np.dtype(np.float32): {"rtol": 2e-5, "atol": 2e-6},
    np.dtype(np.float64): {"rtol": 1e-10, "atol": 1e-12},
    # float16 results against a float32-upcast reference (RELIABILITY.md item 14): one half-precision
    # rounding of the output is 2^-11 ~ 4.9e-4 relative.
    np.dtype(np.float16): {"rtol": 1e-3, "atol": 1e-3},
}


def tol(dtype, scale: float = 1.0) -> dict:
    """Tolerances for ``dtype``, widened by ``scale`` (callers say why when scale != 1)."""
    t = TOL[np.dtype(dtype)]
    return {"rtol": t["rtol"] * scale, "atol": t["atol"] * scale}


def torch_tensor(a, requires_grad: bool = False, upcast_half: bool = True):
    """A CPU torch tensor from a host array (float16 upcast to float32 for references)."""
    import torch

    a = np.asarray(a)
    if upcast_half and a.dtype == np.float16:
        a = a.astype(np.float32)
    return torch.tensor(a, requires_grad=requires_grad)


def host(a) -> np.ndarray:
    """Copy a CuPy (or NumPy) array to the host."""
    return to_numpy(a)
