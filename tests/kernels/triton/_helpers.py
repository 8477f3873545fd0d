"""Shared set-up for the Triton backend tests: skip rules, device, inputs and tolerances.

The Triton kernels need CUDA, or the CPU interpreter (``TRITON_INTERPRET=1``, read when the kernels are
defined, so it must be set before pytest starts). Under the interpreter every program runs in Python:
keep shapes small.
"""
import os

import numpy as np
import pytest

from tests._compare import rand


def require_triton():
    """Skip the calling test module unless Triton can run here (call at module level)."""
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    import torch

    if not (os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()):
        pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1", allow_module_level=True)


def device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def interpreting():
    return os.environ.get("TRITON_INTERPRET") == "1"


# Dtypes the tests run: the interpreter has no bfloat16 (NumPy has none).
def float_dtypes():
    import torch

    dts = [torch.float32, torch.float16]
    if not interpreting():
        dts.append(torch.bfloat16)
    return dts


# Tolerances against an fp32 (fp16/bf16: fp32-upcast) torch reference. fp32: a few ulps of reordering
# (sums in another order than torch's, exp on the GPU through ex2.approx). fp16/bf16: one rounding of the
# output (2^-11 / 2^-8 relative) plus the input rounding the reference does not see.
TOL = {
    "float32": dict(rtol=1e-5, atol=1e-6),
    "float16": dict(rtol=2e-3, atol=2e-3),
    "bfloat16": dict(rtol=1.6e-2, atol=1e-2),
    "float64": dict(rtol=1e-10, atol=1e-12),
}


def tol(dtype, scale=1.0):
    """Tolerances for ``dtype`` (a torch dtype), optionally widened by ``scale``."""
    t = TOL[str(dtype).replace("torch.", "")]
    return dict(rtol=t["rtol"] * scale, atol=t["atol"] * scale)


def trand(shape, dtype, seed=0, scale=1.0):
    """A standard-normal torch tensor on the test device, drawn in float64 then cast to ``dtype``."""
    import torch

    return torch.from_numpy(np.asarray(rand(shape, np.float64, seed=seed, scale=scale))).to(device=device(), dtype=dtype)


def upcast(t):
    """fp16/bf16 as fp32 (the reference precision); other dtypes unchanged."""
    import torch

    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


gpu = pytest.mark.gpu


def require_cuda():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
