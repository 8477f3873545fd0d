"""Recycled buffers for the Numba kernels: the CPU counterpart of a GPU caching allocator.

A fresh large NumPy array costs its first-touch page faults: glibc serves it from a new ``mmap`` (or from
heap pages it trimmed back to the OS after the previous step) and the kernel faults every 4 KiB page in on
first write. On the project machine (a VM) that is ~5 ms for 64 MiB, a third of a softmax over 4096x4096
floats and ~300 ms for a 524 MB cross-entropy gradient. In a training loop (or a benchmark) the previous
call's output is freed just before the next one of the same size is needed, so large outputs and scratch
arrays are recycled: when every view of a block (NumPy, or torch through ``torch.from_numpy``) is gone,
`_Block.__del__` parks its memory on a free list (one per byte size) instead of returning it to the OS,
and the next `empty` of that byte size takes it.

Measured in the transformer-LM training step of bench/bench_train_step.py (2-core Zen 5 VM, 2026-11-27):
with 32 MiB the smallest pooled size and 4 idle blocks at most, the step took ~40,000 minor page faults
(~160 MB of first touches, 142 ms of system time per step); the attention backward's packed operands
(7 x 4 MiB per call) alone were 18,000 of them. Pooling from 1 MiB with up to 256 idle blocks removes
those (numbers in bench/NOTES.md).

A recycled block is a fresh output to its caller (nobody else references it). Its old contents are there,
so only kernels that write every element may use `empty` (as with ``np.empty``); `zeros` clears it.
Blocks are 64-byte aligned. Small arrays come from malloc's heap (its small bins reuse their pages) and
are not pooled. Idle memory is bounded (`MAX_IDLE` blocks, `MAX_IDLE_BYTES` in all: an eighth of RAM, at
least 1 GiB): a block freed into a full pool evicts the blocks parked longest ago, so the pool follows the
sizes in use. `drop_idle` returns it all.
"""
from __future__ import annotations

import math
import os
import threading

import numpy as np

MIN_BYTES = 1 << 20  # smaller arrays: plain np.empty
MAX_IDLE = 256  # idle blocks kept at most (a training step cycles through dozens of activation sizes)


def _idle_bytes_cap() -> int:
    # an eighth of the machine's RAM, at least 1 GiB: room for a large-vocabulary cross-entropy gradient
    # (8192x50257 float32 is 1.65 GB; at a 1 GiB cap it was never recycled, and its first-touch page faults
    # took the fused loss+gradient from 86 to 119 ms on the 24 GiB project machine)
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return 1 << 30
    return max(1 << 30, ram // 8)


MAX_IDLE_BYTES = _idle_bytes_cap()  # idle memory kept at most, all blocks together

# byte size (of the raw block) -> [(stamp, raw uint8 array)], most recently freed last; never an empty list
_free = {}
_idle = [0, 0, 0]  # idle blocks, idle bytes, last stamp (under _lock)
_lock = threading.Lock()


def _evict_oldest():
    # under _lock, _free not empty: drop the block parked longest ago (the pool follows the sizes in use)
    size = min(_free, key=lambda n: _free[n][0][0])
    blocks = _free[size]
    blocks.pop(0)
    if not blocks:
        del _free[size]
    _idle[0] -= 1
    _idle[1] -= size


class _Block:
    """Owner of one buffer: arrays made from it (and their views) keep it alive."""

    __slots__ = ("__array_interface__", "raw")

    def __init__(self, raw, shape, dtype):
        self.raw = raw  # 1-D uint8 array holding the memory (64 bytes more than needed, for alignment)
        address = raw.ctypes.data + (-raw.ctypes.data) % 64
        self.__array_interface__ = {"shape": shape, "typestr": np.dtype(dtype).str, "version": 3,
                                    "data": (address, False)}

    def __del__(self):
        # never block here (this can run inside any allocation, in any thread): drop the block if busy
        try:
            if _lock.acquire(blocking=False):
                try:
                    n = self.raw.nbytes
                    if 0 < MAX_IDLE and n <= MAX_IDLE_BYTES:
                        while _idle[0] >= MAX_IDLE or _idle[1] + n > MAX_IDLE_BYTES:
                            _evict_oldest()
                        _idle[2] += 1
                        _free.setdefault(n, []).append((_idle[2], self.raw))
                        _idle[0] += 1
                        _idle[1] += n
                finally:
                    _lock.release()
        except Exception:  # noqa: BLE001, S110 - interpreter shutdown: module globals may be gone; just drop it
            pass


def empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array, from the free list when an idle block of its byte size exists.

    Args:
        shape: tuple of ints.
        dtype: NumPy dtype.

    Returns:
        A writeable array; 64-byte aligned when it is at least `MIN_BYTES` (then pooled).
    """
    shape = tuple(int(n) for n in shape)
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes < MIN_BYTES:
        return np.empty(shape, dtype)
    raw = None
    with _lock:
        same = _free.get(nbytes + 64)
        if same:
            raw = same.pop()[1]  # the most recently freed first: likeliest still in cache
            if not same:
                del _free[nbytes + 64]
            _idle[0] -= 1
            _idle[1] -= raw.nbytes
    if raw is None:
        raw = np.empty(nbytes + 64, np.uint8)
    return np.asarray(_Block(raw, shape, dtype))


def empty_like(x) -> np.ndarray:
    """`empty` with ``x``'s shape and dtype (always C-contiguous)."""
    return empty(x.shape, x.dtype)


def zeros(shape, dtype) -> np.ndarray:
    """`empty`, cleared: a zero-filled C-contiguous array (a recycled block is cleared in place, no faults)."""
    out = empty(shape, dtype)
    out.fill(0)
    return out


def idle() -> tuple:
    """``(blocks, bytes)`` parked on the free lists now."""
    with _lock:
        return _idle[0], _idle[1]


def drop_idle() -> None:
    """Return every idle block to the OS (benchmarks call this between shapes; tests, to start clean)."""
    with _lock:
        _free.clear()
        _idle[0] = _idle[1] = 0
