"""Numba CPU kernels: see ../README.md for the contract.

Every kernel is compiled with ``cache=True`` (a second process loads machine code from ``__pycache__``
instead of compiling). Numba's default 'workqueue' threading layer aborts when parallel kernels are
launched from several Python threads at once, so unless the user chose a layer with
``NUMBA_THREADING_LAYER``, we ask for a thread-safe one (TBB or OpenMP, whichever is installed).

The OpenMP pool is started with ``OMP_WAIT_POLICY=PASSIVE`` (for Numba's pool only: the variable is set while
its libgomp loads and removed afterwards, and a value the user set is left alone). With GNU OpenMP's default,
idle workers spin for a while after each parallel kernel and take the cores from the BLAS threads of the
matmul that usually comes next: a training step of a 4-layer transformer (bench/bench_train_step.py, lm)
measured 2161 ms with the pool spinning (OMP_WAIT_POLICY=ACTIVE) and 1286-1585 ms passive, on 2 cores at
load 2 (2026-11-26). Waking a sleeping worker costs microseconds, nothing next to a kernel worth running
in parallel.
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


def _start_pool_without_spinning():
    if numba.config.THREADING_LAYER not in ("threadsafe", "omp") or "OMP_WAIT_POLICY" in os.environ \
            or "GOMP_SPINCOUNT" in os.environ:
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # read once, when libgomp is loaded by the pool's launch
    try:
        from numba.np.ufunc import parallel

        parallel._launch_threads()
    except Exception:  # noqa: BLE001, S110 - a private Numba entry point: if it changes, keep the default
        pass
    finally:
        del os.environ["OMP_WAIT_POLICY"]


_start_pool_without_spinning()
