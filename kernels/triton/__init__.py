"""triton backend kernels: see ../README.md for the contract."""
