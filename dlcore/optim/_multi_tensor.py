"""One fused Adam/AdamW launch over many parameters (torch's ``fused=True`` / ``foreach`` idea on the CPU).

The per-parameter kernel (`dlcore.ops.adam_` / `adamw_`) costs one parallel launch per tensor: for a
transformer's ~40 parameters that is ~40 thread-pool wake-ups per step, each a scheduler slice on a busy
machine. Here the parameters of one group (same dtype, same step count) go to one Numba kernel that walks a
table of chunks ``(tensor, start, stop)`` in parallel. Every element gets exactly the single-tensor
arithmetic (`_adam_update` from the Numba optimizer kernels, torch's operation-by-operation chain), so the
result is bit-identical to stepping each parameter with `dlcore.ops.adamw_`, whatever the chunking or thread
count. Small totals run the same loop serially on the calling thread.

Arrays: lists of 1-D C-contiguous NumPy arrays of one float dtype (float32 or float64); param, exp_avg and
exp_avg_sq are updated in place; grads are only read.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange
from numba.typed import List

from dlcore.kernels.numba.optimizers import _adam_serial_kernel, _adam_update, adam_hyper  # noqa: F401 - re-exported

CHUNK = 1 << 16  # elements per parallel work item
SERIAL_BELOW = 1 << 17  # total elements below which the step runs on the calling thread


@njit(parallel=True, cache=True, error_model="numpy")
def _adam_multi_kernel(params, grads, exp_avgs, exp_avg_sqs, chunk_tensor, chunk_start, chunk_stop, hyper, flags):
    # one work item per chunk of one tensor; each element replays torch's single-tensor chain
    for c in prange(chunk_tensor.shape[0]):
        t = chunk_tensor[c]
        p, g, m, v = params[t], grads[t], exp_avgs[t], exp_avg_sqs[t]
        for i in range(chunk_start[c], chunk_stop[c]):
            p[i], m[i], v[i] = _adam_update(p[i], g[i], m[i], v[i], hyper, flags)


@njit(cache=True, error_model="numpy")
def _adam_multi_serial_kernel(params, grads, exp_avgs, exp_avg_sqs, hyper, flags):
    for t in range(len(params)):
        p, g, m, v = params[t], grads[t], exp_avgs[t], exp_avg_sqs[t]
        for i in range(p.shape[0]):
            p[i], m[i], v[i] = _adam_update(p[i], g[i], m[i], v[i], hyper, flags)


class ChunkTable:
    """The (tensor, start, stop) work items over a fixed list of sizes; rebuilt only when the sizes change."""

    def __init__(self, sizes):
        self.sizes = tuple(sizes)
        tensor, start, stop = [], [], []
        for t, n in enumerate(self.sizes):
            for s in range(0, n, CHUNK):
                tensor.append(t)
                start.append(s)
                stop.append(min(n, s + CHUNK))
        self.tensor = np.array(tensor, np.int64)
        self.start = np.array(start, np.int64)
        self.stop = np.array(stop, np.int64)
        self.total = sum(self.sizes)


def typed_list(arrays):
    """A Numba typed List of the arrays (a reflected Python list is deprecated in Numba)."""
    out = List()
    for a in arrays:
        out.append(a)
    return out


def adam_multi_step(params, grads, exp_avgs, exp_avg_sqs, table, hyper, flags):
    """One Adam/AdamW step over every tensor of the typed Lists (see `adam_hyper`); in place.

    Args:
        params, grads, exp_avgs, exp_avg_sqs: typed Lists of 1-D C-contiguous arrays, one dtype, matching
            sizes (``table.sizes``); no two of a parameter's four arrays may overlap.
        table: the `ChunkTable` of those sizes.
        hyper, flags: from `adam_hyper`.
    """
    if table.total < SERIAL_BELOW:
        _adam_multi_serial_kernel(params, grads, exp_avgs, exp_avg_sqs, hyper, flags)
    else:
        _adam_multi_kernel(params, grads, exp_avgs, exp_avg_sqs, table.tensor, table.start, table.stop, hyper,
                           flags)


def adam_small_step(params, grads, exp_avgs, exp_avg_sqs, hyper, flags):
    """The serial path for small totals (below `SERIAL_BELOW`) on plain lists of arrays: one Numba call per
    tensor on the calling thread. A typed List of a step's fresh gradients costs ~40 us per append, more
    than the update itself for a small model; the numbers are the same `_adam_update` chain."""
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        _adam_serial_kernel(p, g, m, v, hyper, flags, 0, 0)


class TensorLists:
    """One group's parameter and moment views (plain lists), their chunk table, and (made on first need)
    the typed Lists the parallel kernel takes. Cached by the optimizers per group: iterating a typed List
    from Python costs ~10 us per item, so the small-model path walks the plain lists instead."""

    def __init__(self, params, exp_avgs, exp_avg_sqs):
        self.params, self.exp_avgs, self.exp_avg_sqs = params, exp_avgs, exp_avg_sqs
        self.table = ChunkTable([p.shape[0] for p in params])
        self._typed = None

    def step(self, grads, hyper, flags):
        """One Adam/AdamW step of every tensor (``grads``: this step's 1-D gradients, a plain list)."""
        if self.table.total < SERIAL_BELOW:
            adam_small_step(self.params, grads, self.exp_avgs, self.exp_avg_sqs, hyper, flags)
            return
        if self._typed is None:
            self._typed = tuple(typed_list(x) for x in (self.params, self.exp_avgs, self.exp_avg_sqs))
        p, m, v = self._typed
        adam_multi_step(p, typed_list(grads), m, v, self.table, hyper, flags)
