"""dlcore/_pool.py: large NumPy temporaries of the glue (contiguous copies, copying reshapes, residual adds) come
from the Numba kernels' recycled blocks, with exactly NumPy's values; everything else takes NumPy's path."""
import gc
import resource

import numpy as np
import pytest
from dlcore.kernels.numba import _blocks

import dlcore
from dlcore import _pool
from tests._compare import rand

BIG = (1024, 300)  # 1.2 MB of float32: above the pool's threshold


@pytest.fixture(autouse=True)
def _clean_pool():
    _blocks.drop_idle()
    yield
    _blocks.drop_idle()


def _recycled(a):
    """Whether ``a``'s memory is a pooled block (its base chain ends in a `_blocks._Block`)."""
    while a is not None:
        if isinstance(a, _blocks._Block):
            return True
        a = getattr(a, "base", None)
    return False


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_contiguous_copy_of_a_large_view_is_pooled_and_equal(dtype):
    x = rand((BIG[1], BIG[0]), dtype, seed=1).T  # a transposed (F-ordered) view
    y = _pool.contiguous(x)
    assert y.flags.c_contiguous and _recycled(y) and np.array_equal(y, np.ascontiguousarray(x))
    small = rand((7, 5), dtype, seed=2).T
    assert not _recycled(_pool.contiguous(small))
    c = np.ascontiguousarray(x)
    assert _pool.contiguous(c) is c  # already contiguous: no copy at all
    assert _pool.contiguous(np.float32(2.0)).shape == (1,)  # NumPy's rule for 0-d input kept


def test_reshape_views_where_numpy_does_and_copies_into_a_block_where_it_must():
    x = rand((4, 300, 256), np.float32, seed=3)
    p = x.transpose(1, 0, 2)  # (300, 4, 256): merging the first two axes needs a copy
    r = _pool.reshape(p, (1200, 256))
    assert _recycled(r) and np.array_equal(r, p.reshape(1200, 256))
    v = _pool.reshape(x[:, :, :128], (4, 300, 2, 64))  # a view is possible: no copy
    assert np.shares_memory(v, x) and np.array_equal(v, x[:, :, :128].reshape(4, 300, 2, 64))


def test_add_of_two_large_arrays_is_pooled_and_bitwise_numpys():
    a, b = rand(BIG, np.float32, seed=4), rand(BIG, np.float32, seed=5)
    s = _pool.add(a, b)
    assert _recycled(s) and np.array_equal(s, a + b)
    mixed = _pool.add(a, b.astype(np.float64))  # promotion: NumPy's path and result dtype
    assert mixed.dtype == np.float64 and not _recycled(mixed)
    assert np.array_equal(_pool.add(a, 1.5), a + 1.5)


def test_autograd_residual_add_and_reshape_use_the_pool_and_keep_gradients():
    x = dlcore.Tensor(rand(BIG, np.float32, seed=6), requires_grad=True)
    y = dlcore.Tensor(rand(BIG, np.float32, seed=7), requires_grad=True)
    z = (x + y).permute((1, 0)).reshape((BIG[0] * BIG[1],))
    assert _recycled(z.data) and np.array_equal(z.data, (x.data + y.data).T.reshape(-1))
    z.sum().backward()
    assert np.array_equal(x.grad, np.ones(BIG, np.float32)) and np.array_equal(y.grad, np.ones(BIG, np.float32))


def test_attention_backward_scratch_is_recycled_between_calls():
    """The packed operands of the attention backward (7 arrays of 2 MiB here) come back from the pool on
    the next call: almost no first-touch page faults (they were ~18,000 a call in the LM training step)."""
    from dlcore.kernels.numba import attention as na

    q, k, v, g = (rand((32, 256, 64), np.float32, seed=s) for s in range(4))
    out, lse = na.attention_forward(q, k, v, None, True, 0.125)
    first = na.attention_backward(g, q, k, v, out, lse, None, True, 0.125)
    del first
    gc.collect()
    assert _blocks.idle()[0] >= 7
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    again = na.attention_backward(g, q, k, v, out, lse, None, True, 0.125)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    scratch_pages = 10 * q.nbytes // 4096  # 7 packed operands + dQ partials + 2 outputs, if all were fresh
    assert faults < scratch_pages // 4, f"{faults} page faults for {scratch_pages} pages of recycled scratch"
    assert all(a.shape == q.shape for a in again)
