"""Fixtures for the CuPy backend's tests.

``cp`` is the CuPy module when CuPy imports and sees a CUDA device; otherwise every test that asks for it is
skipped. With ``DLCORE_CUPY_EMULATE=1`` it is instead a NumPy-backed stand-in whose RawKernels and
ElementwiseKernels run on the CPU emulator in ``emu/`` (needs g++ >= 12): slow, but it runs the real kernel
sources and launchers, so the GPU tests can be exercised on a machine without a GPU.
"""
from __future__ import annotations

import importlib
import os
import sys

import pytest


def _real_cupy():
    try:
        import cupy
    except Exception as exc:  # noqa: BLE001  (not installed, or its CUDA libraries fail to load)
        return None, f"cupy is not importable ({type(exc).__name__}: {exc})"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None, "cupy sees no CUDA device"
    except Exception as exc:  # noqa: BLE001  (no driver: CUDARuntimeError and friends)
        return None, f"cupy sees no CUDA device ({type(exc).__name__})"
    return cupy, ""


@pytest.fixture(scope="session")
def cp():
    """The array module the kernels run on: real CuPy, the CPU emulator, or a skip."""
    if os.environ.get("DLCORE_CUPY_EMULATE") == "1":
        from tests.kernels.cupy.emu import fake_cupy

        if not fake_cupy.available():
            pytest.skip("DLCORE_CUPY_EMULATE=1 needs g++")
        saved = sys.modules.get("cupy")
        fake = fake_cupy.make_module()
        sys.modules["cupy"] = fake
        try:
            yield fake
        finally:
            if saved is None:
                sys.modules.pop("cupy", None)
            else:
                sys.modules["cupy"] = saved
        return
    real, why = _real_cupy()
    if real is None:
        pytest.skip(why)
    yield real


@pytest.fixture(scope="session")
def kernels(cp):
    """``kernels('softmax')`` imports ``dlcore.kernels.cupy.softmax`` (after ``cp`` is settled)."""
    import dlcore  # noqa: F401  (installs the dlcore.kernels alias)

    return lambda name: importlib.import_module(f"dlcore.kernels.cupy.{name}")
