"""Numba CPU kernels: see ../README.md for the contract.

Every kernel is compiled with ``cache=True`` (a second process loads machine code from ``__pycache__``
instead of compiling). Numba's default 'workqueue' threading layer aborts when parallel kernels are
launched from several Python threads at once, so unless the user chose a layer with
``NUMBA_THREADING_LAYER``, we ask for a thread-safe one (TBB or OpenMP, whichever is installed).
"""
import importlib
import os

import numba


def _threadsafe_layer_available() -> bool:
    for mod in ("numba.np.ufunc.tbbpool", "numba.np.ufunc.omppool"):
        try:
            importlib.import_module(mod)
            return True
        except ImportError:
            continue
    return False


if "NUMBA_THREADING_LAYER" not in os.environ and _threadsafe_layer_available():
    numba.config.THREADING_LAYER = "threadsafe"
