"""Framework-free kernels, one sub-package per backend with the same module names (see README.md)."""
