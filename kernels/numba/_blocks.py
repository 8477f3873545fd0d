"""Recycled output buffers for the Numba kernels: the CPU counterpart of a GPU caching allocator.

A fresh large NumPy array costs its first-touch page faults: glibc serves it from a new ``mmap`` and the
kernel faults every 4 KiB page in on first write. On the project machine (a VM) that is ~5 ms for 64 MiB,
a third of a softmax over 4096x4096 floats and ~300 ms for a 524 MB cross-entropy gradient. In a
training loop (or a benchmark) the previous call's output is freed just before the next one of the same
size is needed, so large outputs are recycled: when every view of a block (NumPy, or torch through
``torch.from_numpy``) is gone, `_Block.__del__` parks its memory on a small free list instead of returning
it to the OS, and the next `empty` of that byte size takes it.

A recycled block is a fresh output to its caller (nobody else references it). Its old contents are there,
so only kernels that write every element may use `empty` (as with ``np.empty``). Blocks are 64-byte
aligned. Small arrays come from malloc's heap, which already reuses its pages, and are not pooled.
"""
from __future__ import annotations

import math
import threading

import numpy as np

MIN_BYTES = 32 << 20  # smaller arrays: plain np.empty
MAX_IDLE = 4  # idle blocks kept at most (a softmax forward, its backward, an activation, a gradient)
MAX_IDLE_BYTES = 1 << 30  # idle memory kept at most, all blocks together

_free = []  # raw uint8 arrays, most recently freed last
_lock = threading.Lock()


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
                    idle = sum(b.nbytes for b in _free)
                    if len(_free) < MAX_IDLE and idle + self.raw.nbytes <= MAX_IDLE_BYTES:
                        _free.append(self.raw)
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
        for k in range(len(_free) - 1, -1, -1):  # the most recently freed first: likeliest still in cache
            if _free[k].nbytes == nbytes + 64:
                raw = _free.pop(k)
                break
    if raw is None:
        raw = np.empty(nbytes + 64, np.uint8)
    return np.asarray(_Block(raw, shape, dtype))


def empty_like(x) -> np.ndarray:
    """`empty` with ``x``'s shape and dtype (always C-contiguous)."""
    return empty(x.shape, x.dtype)


def drop_idle() -> None:
    """Return every idle block to the OS (benchmarks call this between shapes; tests, to start clean)."""
    with _lock:
        _free.clear()
