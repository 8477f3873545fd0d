"""The Numba backend's recycled output blocks (kernels/numba/_blocks.py)."""
import gc
import os

import numpy as np
import pytest
import torch
from dlcore.kernels.numba import _blocks
from dlcore.kernels.numba import softmax as nsm

from tests._compare import rand


@pytest.fixture(autouse=True)
def _clean_pool():
    _blocks.drop_idle()
    yield
    _blocks.drop_idle()


def _big(dtype=np.float32):
    n = _blocks.MIN_BYTES // np.dtype(dtype).itemsize
    return (n // 1024 + 1, 1024)  # just above the threshold


def test_small_arrays_are_plain_and_big_ones_aligned():
    small = _blocks.empty((3, 5), np.float64)
    assert small.shape == (3, 5) and small.dtype == np.float64 and small.flags.owndata
    big = _blocks.empty(_big(), np.float32)
    assert big.shape == _big() and big.flags.c_contiguous and big.flags.writeable
    assert big.ctypes.data % 64 == 0


def test_a_block_is_reused_only_when_every_view_is_gone():
    a = _blocks.empty(_big(), np.float32)
    addr = a.ctypes.data
    view = torch.from_numpy(a[1:])
    del a
    gc.collect()
    b = _blocks.empty(_big(), np.float32)
    assert b.ctypes.data != addr, "reused while a torch view was alive"
    del view
    gc.collect()
    c = _blocks.empty(_big(), np.float32)
    assert c.ctypes.data == addr
    assert not np.shares_memory(b, c)


def test_idle_pool_is_bounded(monkeypatch):
    monkeypatch.setattr(_blocks, "MAX_IDLE", 2)
    arrays = [_blocks.empty(_big(), np.float32) for _ in range(4)]
    del arrays
    gc.collect()
    blocks, nbytes = _blocks.idle()
    assert blocks == 2
    monkeypatch.setattr(_blocks, "MAX_IDLE_BYTES", nbytes // 2)
    _blocks.drop_idle()
    arrays = [_blocks.empty(_big(), np.float32) for _ in range(3)]
    del arrays
    gc.collect()
    assert _blocks.idle()[0] == 1


def test_stale_contents_never_show_in_a_kernel_output():
    """softmax writes every element: a recycled block poisoned with NaN gives the same bits as fresh memory."""
    x = rand(_big(), np.float32, seed=3)
    fresh = nsm.softmax_forward(x).copy()
    y = nsm.softmax_forward(x)
    y.fill(np.nan)
    del y
    gc.collect()
    again = nsm.softmax_forward(x)
    assert np.array_equal(again, fresh)


def test_each_size_has_its_own_free_list_and_zeros_clears_a_recycled_block():
    a = _blocks.empty(_big(), np.float32)
    b = _blocks.empty((_big()[0] + 1, 1024), np.float32)
    a_addr, b_addr = a.ctypes.data, b.ctypes.data
    a.fill(np.nan)
    del a, b
    gc.collect()
    assert _blocks.idle()[0] == 2
    c = _blocks.zeros((_big()[0] + 1, 1024), np.float32)  # b's size: b's block, whatever was freed last
    assert c.ctypes.data == b_addr and not c.any()
    d = _blocks.zeros(_big(), np.float32)
    assert d.ctypes.data == a_addr and not d.any()  # the NaNs left in a's block are gone
    assert _blocks.idle() == (0, 0)


def test_a_full_pool_evicts_the_block_parked_longest_ago(monkeypatch):
    """Freed into a full pool, a block evicts the oldest idle one, so the sizes in use stay pooled."""
    monkeypatch.setattr(_blocks, "MAX_IDLE", 2)
    rows = _big()[0]
    arrays = [_blocks.empty((rows + i, 1024), np.float32) for i in range(3)]
    addrs = [a.ctypes.data for a in arrays]
    for i in range(3):  # freed in order 0, 1, 2: block 0 is evicted when block 2 arrives
        arrays[i] = None
        gc.collect()
    assert _blocks.idle()[0] == 2
    fresh = _blocks.empty((rows, 1024), np.float32)  # block 0 was evicted: nothing of this size is pooled
    assert fresh.shape == (rows, 1024) and _blocks.idle()[0] == 2
    again = [_blocks.empty((rows + i, 1024), np.float32) for i in (1, 2)]
    assert [a.ctypes.data for a in again] == addrs[1:]
    assert _blocks.idle() == (0, 0)


def test_idle_cap_is_an_eighth_of_ram_at_least_1_gib():
    # the 8192x50257 float32 cross-entropy gradient (1.65 GB) must fit on a 24 GiB machine
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert _blocks._idle_bytes_cap() == max(1 << 30, ram // 8)
    assert _blocks.MAX_IDLE_BYTES >= 1 << 30
