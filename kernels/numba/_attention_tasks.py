"""Task scheduling for the Numba attention kernels: a shared atomic task counter and a thread launcher.

Why: attention tasks have unequal cost (causal query blocks near the end see more keys) and this library runs
on shared machines where a thread can be descheduled for milliseconds. A static split (task t on worker
t % n) waits for the slowest worker; here every worker takes the next undone task from one atomic counter,
so a stalled or slower worker simply does fewer tasks. Each task writes only its own outputs and computes
them the same way whichever thread runs it, so results do not depend on the thread count or on scheduling.

Workers are ``nogil`` njit functions with the signature ``worker(counter, ntasks, *args)`` that loop::

    t = next_task(counter)
    while t < ntasks:
        ...           # task t
        t = next_task(counter)
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic


@intrinsic
def next_task(typingctx, counter):
    """Atomically ``counter[0] += 1`` and return the old value (int64): the caller's next task index.

    counter: a 1-D C-contiguous int64 array shared by all workers of one launch. The increment is an LLVM
    ``atomicrmw add`` (monotonic: only the counter itself needs to be consistent; the launcher's thread join
    orders the tasks' writes before the caller reads them).
    """
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64 and counter.ndim == 1):
        return None

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        return builder.atomic_rmw("add", data, ir.IntType(64)(1), "monotonic")

    return types.int64(counter), codegen


_pool = None  # (pid, ThreadPoolExecutor): a forked child builds its own
_pool_lock = threading.Lock()


def run_tasks(worker, ntasks, *args):
    """Run ``worker(counter, ntasks, *args)`` on n threads, n = numba's thread count (at most ntasks).

    The calling thread is one of the n workers; the others come from a process-wide pool. Every call gets its
    own counter, so concurrent calls from several Python threads do not interfere.
    """
    counter = np.zeros(1, np.int64)
    n = max(1, min(numba.get_num_threads(), ntasks))
    if n == 1:
        worker(counter, ntasks, *args)
        return
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(numba.config.NUMBA_NUM_THREADS, thread_name_prefix="dlcore-attn"))
        pool = _pool[1]
    futures = [pool.submit(worker, counter, ntasks, *args) for _ in range(1, n)]
    worker(counter, ntasks, *args)
    for f in futures:
        f.result()
