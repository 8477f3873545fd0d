"""dlcore: fused deep-learning kernels (NumPy reference, Numba CPU, Triton and CuPy GPU) behind one API."""
from dlcore import _kernels_alias

_kernels_alias.install()
