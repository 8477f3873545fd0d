"""dlcore.set_num_threads / get_num_threads, NUMBA_NUM_THREADS, and results that do not depend on the
thread count beyond rounding (RELIABILITY 18) for matmul, linear_act, softmax, layer_norm, cross_entropy."""
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

import dlcore
from tests._compare import assert_close, rand


@pytest.fixture
def restore_threads():
    saved = dlcore.get_num_threads()
    yield
    dlcore.set_num_threads(saved)


def test_set_and_get_round_trip(restore_threads):
    dlcore.set_num_threads(1)
    assert dlcore.get_num_threads() == 1 == numba.get_num_threads()
    dlcore.set_num_threads(np.int64(numba.config.NUMBA_NUM_THREADS))  # NumPy integers are accepted
    assert dlcore.get_num_threads() == numba.config.NUMBA_NUM_THREADS


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-1, ValueError), (10**6, ValueError),
                                        (1.5, TypeError), ("2", TypeError)])
def test_bad_thread_counts_raise(restore_threads, bad, error):
    before = dlcore.get_num_threads()
    with pytest.raises(error, match="set_num_threads"):
        dlcore.set_num_threads(bad)
    assert dlcore.get_num_threads() == before


def test_numba_num_threads_is_the_upper_bound():
    """NUMBA_NUM_THREADS=1 in a fresh process: one thread, and asking for two is a clear error."""
    code = ("import dlcore\n"
            "print(dlcore.get_num_threads())\n"
            "try:\n    dlcore.set_num_threads(2)\nexcept ValueError as e:\n    print('refused', 'NUMBA_NUM_THREADS=1' in str(e))\n")
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split() == ["1", "refused", "True"]


def _cases():
    x32 = rand((257, 129), np.float32, seed=1)
    return {
        "matmul": lambda: dlcore.ops.matmul(rand((3, 65, 40), np.float32, seed=2), rand((40, 33), np.float32, seed=3)),
        "linear_act": lambda: dlcore.ops.linear_act(x32, rand((70, 129), np.float32, seed=4),
                                                    rand(70, np.float32, seed=5), "gelu"),
        "softmax": lambda: dlcore.ops.softmax(x32, dim=-1),
        "log_softmax": lambda: dlcore.ops.log_softmax(x32, dim=0),
        "layer_norm": lambda: dlcore.ops.layer_norm(x32, (129,), rand(129, np.float32, seed=6),
                                                    rand(129, np.float32, seed=7)),
        "cross_entropy": lambda: dlcore.ops.cross_entropy(x32, np.random.default_rng(8).integers(0, 129, 257),
                                                          label_smoothing=0.1),
    }


@pytest.mark.parametrize("op", list(_cases()))
def test_results_do_not_depend_on_the_thread_count(restore_threads, op):
    fn = _cases()[op]
    with dlcore.backend("numba"):
        dlcore.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = fn()
        again = fn()
        dlcore.set_num_threads(1)
        one = fn()
    assert np.asarray(many).tobytes() == np.asarray(again).tobytes(), f"{op}: same input, same threads, different bits"
    # float32 reductions may regroup with the thread count: equal within rounding, nothing more
    assert_close(one, many, rtol=1e-6, atol=1e-7, msg=f"{op}: 1 thread vs {numba.config.NUMBA_NUM_THREADS}")


def test_small_plain_numpy_ops_run_their_numba_kernels_on_one_thread(restore_threads, monkeypatch):
    """A small non-BLAS op called on NumPy arrays (no autograd) runs its kernel on the calling thread, as
    autograd does for small ops; a large one keeps the pool (dlcore.autograd.small_op_threads)."""
    from dlcore.kernels.numba import activations as na

    n = min(2, numba.config.NUMBA_NUM_THREADS)  # 2 where the machine allows it
    dlcore.set_num_threads(n)
    seen = []
    real = na._launch

    def spy(kernel, x, *inputs):
        seen.append(numba.get_num_threads())
        return real(kernel, x, *inputs)

    monkeypatch.setattr(na, "_launch", spy)
    small, big = rand((128, 256), np.float32, seed=1), rand((1024, 256), np.float32, seed=2)
    assert_close(dlcore.ops.relu(small), np.maximum(small, 0))
    assert_close(dlcore.ops.relu(big), np.maximum(big, 0))
    assert seen == [1, n] and numba.get_num_threads() == n
