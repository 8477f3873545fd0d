"""CPU emulation of CuPy kernels for the cupy backend's tests (see fake_cupy.py)."""
