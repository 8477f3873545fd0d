"""Backend dispatch: the documented precedence, explain, errors, visible fallbacks, lazy imports."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

import dlcore
from dlcore import _dispatch

X = np.random.default_rng(0).standard_normal((4, 7)).astype(np.float32)


@pytest.fixture(autouse=True)
def _clean_preferences(monkeypatch):
    for k in list(os.environ):
        if k.startswith("DLCORE_BACKEND"):
            monkeypatch.delenv(k)
    dlcore.set_backend("auto")
    yield
    dlcore.set_backend("auto")


def chosen(op="softmax", *args, **kw):
    return dlcore.explain(op, *(args or (X,)), **kw).backend


def test_cpu_backends_available_and_auto_is_default():
    assert {"numpy", "numba"} <= set(dlcore.available_backends())
    assert dlcore.get_backend() == "auto"
    assert chosen() == "numba"


def test_torch_cpu_tensors_dispatch_like_numpy():
    torch = pytest.importorskip("torch")
    assert chosen("softmax", torch.from_numpy(X)) == "numba"


def test_plain_torch_cpu_tensors_take_the_view_path_and_the_rest_does_not():
    """`Call` views bare CPU tensors that need no gradient with ``.numpy()`` (no general kind check); a
    negative-bit view, a tensor that requires grad, a Parameter and a mix with NumPy take the general path,
    and every path gives the same values."""
    torch = pytest.importorskip("torch")
    from dlcore.ops._common import Call

    x = torch.from_numpy(X)
    w = torch.from_numpy(X[:5].copy())
    call = Call("linear", {"input": x, "weight": w, "bias": None})
    assert call.torch_plain and call.kind == "torch_cpu" and not call.numpy_data
    want = X @ X[:5].T
    y = dlcore.ops.linear(x, w)
    assert type(y) is torch.Tensor and np.allclose(y.numpy(), want, rtol=1e-6, atol=1e-6)

    neg = torch.complex(torch.zeros(4, 7), torch.from_numpy(-X)).conj().imag  # X, carried as a negative bit
    assert neg.is_neg()
    assert not Call("softmax", {"input": neg}).torch_plain
    np.testing.assert_allclose(dlcore.ops.softmax(neg, dim=-1).numpy(), dlcore.ops.softmax(X, dim=-1), rtol=1e-6)

    leaf = x.clone().requires_grad_(True)
    assert not Call("softmax", {"input": leaf}).torch_plain
    assert dlcore.ops.softmax(leaf, dim=-1).requires_grad
    assert not Call("softmax", {"input": torch.nn.Parameter(x.clone())}).torch_plain
    with pytest.raises(TypeError, match="NumPy array"):
        dlcore.ops.linear(x, X[:5].copy())
    with pytest.raises(TypeError, match="floating-point"):
        dlcore.ops.softmax(torch.ones(3, 4, dtype=torch.int64), dim=-1)


def test_set_backend_then_context_then_env_then_per_op_env_then_argument(monkeypatch):
    dlcore.set_backend("numpy")
    assert chosen() == "numpy"
    with dlcore.backend("numba"):  # the scoped preference beats the global one
        assert chosen() == "numba"
        with dlcore.backend("numpy"):
            assert chosen() == "numpy"
        assert chosen() == "numba"
        monkeypatch.setenv("DLCORE_BACKEND", "numpy")  # env beats set_backend/context
        assert chosen() == "numpy"
        monkeypatch.setenv("DLCORE_BACKEND_SOFTMAX", "numba")  # per-op env beats the global env
        assert chosen() == "numba"
        assert chosen("log_softmax") == "numpy"  # ... for that op only
        assert chosen(backend="numpy") == "numpy"  # the explicit argument beats everything


def test_per_op_env_var_name_strips_trailing_underscore(monkeypatch):
    monkeypatch.setenv("DLCORE_BACKEND_ADAMW", "numpy")
    p = np.ones(3)
    assert dlcore.explain("adamw_", p, p, p, p, step=1, lr=0.1).backend == "numpy"


def test_context_is_local_to_a_thread():
    seen = []
    with dlcore.backend("numpy"):
        t = threading.Thread(target=lambda: seen.append(chosen()))
        t.start()
        t.join()
        assert chosen() == "numpy"
    assert seen == ["numba"]


def test_explain_says_what_and_why():
    text = str(dlcore.explain("softmax", X))
    assert "numba" in text and "softmax_forward" in text and "auto" in text and "float32" in text
    text = str(dlcore.explain("softmax", X, backend="numpy"))
    assert "backend= argument" in text


def test_explain_matmul_mentions_blas():
    a = np.ones((3, 3))
    assert "BLAS" in str(dlcore.explain("matmul", a, a))


def test_unknown_and_unavailable_backends_raise_with_install_hint(monkeypatch):
    with pytest.raises(dlcore.BackendError, match="unknown backend 'nope'"):
        dlcore.ops.softmax(X, backend="nope")
    with pytest.raises(dlcore.BackendError, match="unknown backend"):
        dlcore.set_backend("nope")
    monkeypatch.setattr(_dispatch.Backend, "missing", lambda self: "the 'cupy' package is not installed (pip install cupy)"
                        if self.name == "cupy" else None)
    with pytest.raises(dlcore.BackendError, match="cupy.*pip install cupy"):
        dlcore.ops.softmax(X, backend="cupy")


def test_backend_that_cannot_take_the_arrays_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(_dispatch.Backend, "missing", lambda self: None)  # pretend a GPU is there
    with pytest.raises(dlcore.BackendError, match="triton.*cannot take NumPy arrays"):
        dlcore.ops.softmax(X, backend="triton")


def test_env_var_with_bad_name_raises(monkeypatch):
    monkeypatch.setenv("DLCORE_BACKEND", "numbaa")
    with pytest.raises(dlcore.BackendError, match="numbaa"):
        dlcore.ops.softmax(X)


def test_missing_op_falls_back_visibly(monkeypatch):
    real = _dispatch.implements
    monkeypatch.setattr(_dispatch, "implements", lambda b, op: False if (b, op) == ("numba", "softmax") else real(b, op))
    monkeypatch.setattr(_dispatch, "_warned", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = dlcore.ops.softmax(X, backend="numba")
    assert any(issubclass(w.category, dlcore.BackendFallbackWarning) for w in caught)
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-6)
    exp = dlcore.explain("softmax", X, backend="numba")
    assert exp.backend == "numpy" and any("fell back" in n for n in exp.notes)
    with warnings.catch_warnings(record=True) as caught:  # auto also leaves a trace
        warnings.simplefilter("always")
        monkeypatch.setattr(_dispatch, "_warned", set())
        dlcore.ops.softmax(X)
    assert any("no softmax kernel" in str(w.message) for w in caught)


def test_import_is_light_and_fast():
    """`import dlcore` loads neither torch nor numba, and adds little to NumPy's own import.

    The total (NumPy included) is measured in bench/cold_start.py and quoted in the README; here we bound
    dlcore's own share, which does not depend on how loaded the machine is as much as the total does.
    """
    code = ("import time, sys; t = time.perf_counter(); import numpy; t1 = time.perf_counter(); import dlcore; "
            "t2 = time.perf_counter(); print(t1 - t, t2 - t1, 'torch' in sys.modules, 'numba' in sys.modules)")
    own = []
    for _ in range(3):  # best of three: the first may pay for a cold file cache
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": os.getcwd()}).stdout.split()
        own.append(float(out[1]))
        assert out[2:] == ["False", "False"], "import dlcore must not import torch or numba"
    assert min(own) < 0.15, f"import dlcore took {min(own):.2f}s on top of numpy"


# ------------------------------------------------------------------ one op, one signature, every backend
KERNELS = os.path.join(os.path.dirname(__file__), "..", "..", "kernels")


def _functions(path):
    tree = ast.parse(open(path).read())
    return {n.name: [a.arg for a in n.args.args] for n in tree.body if isinstance(n, ast.FunctionDef)}


@pytest.mark.parametrize("backend", ["numba", "triton", "cupy"])
@pytest.mark.parametrize("module", sorted({op.module for op in _dispatch.OPS.values()}))
def test_every_backend_implements_every_op_with_one_signature(backend, module):
    ref = _functions(os.path.join(KERNELS, "numpy", module + ".py"))
    path = os.path.join(KERNELS, backend, module + ".py")
    assert os.path.exists(path), f"kernels/{backend}/{module}.py is missing"
    got = _functions(path)
    names = {n for op in _dispatch.OPS.values() if op.module == module for n in (op.forward, op.backward) if n}
    for name in sorted(names):
        assert name in got, f"kernels/{backend}/{module}.py lacks {name}"
        assert got[name] == ref[name], f"{backend}.{module}.{name}{got[name]} != numpy's {ref[name]}"
