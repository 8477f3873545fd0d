"""Large BLAS products split over dlcore's own threads, with the BLAS library held at one thread.

Why: on the project machine (2 cores) OpenBLAS's worker threads spin for ~2^28 cycles (~0.1 s) after each
multi-threaded call before they sleep. In a training step a BLAS call comes every few milliseconds, so the
spinners never sleep and take a core from Numba's workers running the next fused kernel: a parallel Numba
region then waits on its descheduled half. The transformer-LM step (bench/bench_train_step.py) measured
1437-1483 ms with the default setup, 1179 ms with OpenBLAS's spin limited (``OPENBLAS_THREAD_TIMEOUT=4``,
which must be set before NumPy loads and so is no fix), 1137 ms with Numba on one thread.

Used by `matmul.blas_matmul` for products inside an autograd step when torch (whose MKL is the better
choice there, see `matmul.between_numba_kernels`) is not loaded. What: a product of at least
`SPLIT_MIN_FLOPS` is cut into row blocks (or batch blocks), one per thread of
dlcore's budget (``numba.get_num_threads()``); each block is one single-threaded BLAS call into its slice
of the output, one on the calling thread and the others on a small pool of Python threads that sleep on a
queue when idle (NumPy releases the GIL inside BLAS). The BLAS library's thread count is lowered to 1 for
the duration and restored after (depth-counted: nested and concurrent users share one lowering), so the
user's own NumPy calls keep their settings. Each output element is still one BLAS dot product of a row of A
and a column of B, but OpenBLAS's kernels for full and partial row blocks may sum it in another order, so a
split result can differ from the unsplit one (and between thread counts) by a few ulps of the products'
magnitude (tests/kernels/test_blas_threads.py).
"""
from __future__ import annotations

import contextlib
import queue
import threading

import numpy as np

SPLIT_MIN_FLOPS = 1 << 26  # smaller products: one np.matmul (a split's hand-off costs ~30 us)


class _BlasThreads:
    """Depth-counted lowering of every loaded BLAS library to one thread.

    The libraries are found once with threadpoolctl. For OpenBLAS with its own thread pool (NumPy's),
    its ``openblas_get/set_num_threads`` are called directly through ctypes (~1 us; threadpoolctl's
    wrapper costs ~10 us a call, and small training ops switch twice each); other libraries go through
    threadpoolctl. Nested and concurrent users (several Python threads) share one lowering: the count
    is lowered on the first entry and restored on the last exit.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._depth = 0
        self._libs = None  # [(get, set)] per library
        self._saved = None

    def _controllers(self):
        if self._libs is None:
            libs = []
            try:
                from threadpoolctl import ThreadpoolController

                for lib in ThreadpoolController().select(user_api="blas").lib_controllers:
                    get = set_ = None
                    if getattr(lib, "internal_api", "") == "openblas" and lib.threading_layer != "openmp":
                        symbol = getattr(lib, "_get_symbol", None)
                        if symbol is not None:
                            get, set_ = symbol("openblas_get_num_threads"), symbol("openblas_set_num_threads")
                    if get is None or set_ is None:
                        get, set_ = (lambda lib=lib: lib.num_threads), lib.set_num_threads
                    libs.append((get, set_))
            except ImportError:  # threadpoolctl missing: the BLAS count cannot be changed
                pass
            self._libs = libs
        return self._libs

    def lower(self):
        with self._lock:
            if self._depth == 0:
                libs = self._controllers()
                self._saved = [get() for get, _ in libs]
                for _, set_ in libs:
                    set_(1)
            self._depth += 1

    def restore(self):
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                for (_, set_), n in zip(self._controllers(), self._saved):
                    set_(n)

    @contextlib.contextmanager
    def one(self):
        """Context: every loaded BLAS library runs on the calling thread only."""
        self.lower()
        try:
            yield
        finally:
            self.restore()


blas_threads = _BlasThreads()


class _Pool:
    """Daemon worker threads that run submitted callables; idle workers sleep on a queue (no spinning)."""

    def __init__(self):
        self._tasks = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._n = 0

    def _worker(self):
        while True:
            fn, done, errors = self._tasks.get()
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                errors.append(exc)
            finally:
                done.release()

    def run(self, fns):
        """Run ``fns`` (callables) concurrently: the first on the calling thread, the rest on workers."""
        with self._lock:
            while self._n < len(fns) - 1:
                threading.Thread(target=self._worker, name=f"dlcore-blas-{self._n}", daemon=True).start()
                self._n += 1
        done, errors = threading.Semaphore(0), []
        for fn in fns[1:]:
            self._tasks.put((fn, done, errors))
        try:
            fns[0]()
        finally:
            for _ in fns[1:]:
                done.acquire()
        if errors:
            raise errors[0]


_pool = _Pool()


def _bounds(n, parts):
    step = -(-n // parts)
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def split_matmul(a, b, out, threads):
    """``np.matmul(a, b, out=out)`` with the work cut over ``threads`` single-threaded BLAS calls.

    Args:
        a: ``(..., M, K)`` float array (any strides).
        b: ``(..., K, N)`` array of a's dtype, batch dims equal to a's (or absent when a is 2-D).
        out: C-contiguous ``(..., M, N)`` output, written.
        threads: how many parts (and threads) to use; 1 is one plain call.

    Returns:
        ``out``.
    """
    if a.ndim > 2 and b.ndim == a.ndim and a.shape[0] >= threads:  # batched: split the batch
        parts = [(lambda s=s: np.matmul(a[s[0]:s[1]], b[s[0]:s[1]], out=out[s[0]:s[1]]))
                 for s in _bounds(a.shape[0], threads)]
    else:  # split the rows of a (and of out) over the threads
        m = a.shape[-2]
        parts = [(lambda s=s: np.matmul(a[..., s[0]:s[1], :], b, out=out[..., s[0]:s[1], :]))
                 for s in _bounds(m, threads)]
    with blas_threads.one():
        _pool.run(parts)
    return out
