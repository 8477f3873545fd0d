"""dlcore.ops with ``backend='triton'`` on torch CPU tensors, through the Triton interpreter: every op in the op
table, forward and gradient against torch, plus the optimizer steps and `dlcore.explain`.

The kernel tests (tests/kernels/triton) call the Triton functions directly; these go through the public
launchers (dispatch, argument checks, moving ``dim`` last, views, broadcasting, empty and 0-d inputs, the
torch autograd bridge) with the Triton kernels underneath. ``make test`` runs them with ``TRITON_INTERPRET=1``,
which must be set before pytest starts (Triton reads it when the kernels are defined); without it this module
is skipped. Under the interpreter the triton backend takes torch CPU tensors (dlcore/_dispatch.py) and every
program runs in Python, so only float32/float64 (NumPy has no bfloat16) and the op table's small shapes.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import dlcore
from tests._compare import assert_close
from tests.dlcore.ops.op_table import OP_IDS, OPS

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("dlcore.ops on the Triton interpreter: run with TRITON_INTERPRET=1 (make test does)",
                allow_module_level=True)
pytest.importorskip("triton")

pytestmark = [
    pytest.mark.triton_interpret,
    # the interpreter evaluates masked-off lanes too (exp(-inf - -inf), log(0)); those values are never stored
    pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.*"),
]

BACKEND = "triton"

# Where the Triton kernels need more than the op table's CPU tolerances, and why (factor on rtol and atol):
# the tanh-GELU's tanh is built from exp (tl has no tanh the interpreter runs), a few ulps from libm's near
# tanh = +-1, which the derivative's (1 - tanh^2) term amplifies (the kernel tests widen it the same way).
WIDEN = {"gelu_tanh": 4.0}


def _tol(op, dtype, grad=False):
    t = op.tolerance(dtype, grad=grad)
    k = WIDEN.get(op.label or op.name, 1.0)
    return {"rtol": t["rtol"] * k, "atol": t["atol"] * k}


def _torch_args(sample, requires_grad=False):
    out = []
    for i, a in enumerate(sample.args):
        if isinstance(a, np.ndarray):
            t = torch.from_numpy(a.copy())
            if requires_grad and i in sample.diff:
                t.requires_grad_(True)
            out.append(t)
        else:
            out.append(a)
    return out


def _upstream(rng, shape, dtype):
    """A fresh random upstream gradient, as a non-contiguous view when it has two or more dims."""
    g = rng.standard_normal(tuple(shape)).astype(dtype)
    if g.ndim < 2:
        return torch.from_numpy(g)
    return torch.from_numpy(np.ascontiguousarray(g.T)).permute(*reversed(range(g.ndim)))


def _check_forward_and_grad(op, dtype, samples, seed):
    fn = getattr(dlcore.ops, op.name)
    rng = np.random.default_rng(seed)
    for s in samples:
        ref_args, our_args = _torch_args(s, True), _torch_args(s, True)
        expected = op.torch_fn(*ref_args, **s.kwargs)
        got = fn(*our_args, backend=BACKEND, **s.kwargs)
        assert isinstance(got, torch.Tensor) and got.device.type == "cpu", f"{s}: torch CPU in must give torch CPU out"
        assert got.dtype == expected.dtype, f"{s}: dtype {got.dtype} != {expected.dtype}"
        assert_close(got, expected, **_tol(op, dtype), msg=f"{op.name} {s} forward")
        if not s.diff:
            continue
        assert got.grad_fn is not None, f"{s}: no autograd graph"
        g = _upstream(rng, expected.shape, dtype)
        expected.backward(g)
        got.backward(g)
        for i in s.diff:
            assert_close(our_args[i].grad, ref_args[i].grad, **_tol(op, dtype, grad=True),
                         msg=f"{op.name} {s} grad of arg {i}")


@pytest.mark.parametrize("op", OPS, ids=OP_IDS)
def test_forward_and_gradients_float32(op):
    """Every sample of the op table (odd sizes, views, broadcasting, empty and 0-d inputs), float32."""
    _check_forward_and_grad(op, np.float32, op.samples(np.float32, np.random.default_rng(1234)), seed=99)


@pytest.mark.parametrize("op", OPS, ids=OP_IDS)
def test_forward_and_gradients_float64(op):
    """float64 accumulates in float64 on the Triton backend too (the first samples: the interpreter is slow)."""
    _check_forward_and_grad(op, np.float64, op.samples(np.float64, np.random.default_rng(4321))[:3], seed=7)


@pytest.mark.parametrize("op", OPS, ids=OP_IDS)
def test_explicit_backward_functions(op):
    """dlcore.ops.<name>_backward(..., backend='triton') gives torch autograd's gradient w.r.t. the first input."""
    bwd = getattr(dlcore.ops, op.name + "_backward")
    rng = np.random.default_rng(5)
    for s in op.samples(np.float32, np.random.default_rng(77))[:4]:
        if 0 not in s.diff:
            continue
        ref_args = _torch_args(s, True)
        out = op.torch_fn(*ref_args, **s.kwargs)
        g = torch.from_numpy(rng.standard_normal(tuple(out.shape)).astype(np.float32))
        out.backward(g)
        args = [torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in s.args]
        if op.name in ("softmax", "log_softmax"):
            got = bwd(g, out.detach(), backend=BACKEND, **s.kwargs)
        else:
            got = bwd(g, *args, backend=BACKEND, **s.kwargs)
        got = got[0] if isinstance(got, tuple) else got
        assert isinstance(got, torch.Tensor)
        assert_close(got, ref_args[0].grad, **_tol(op, np.float32, grad=True), msg=f"{op.name}_backward {s}")


# ----------------------------------------------------------------------------------------------------
# Optimizer steps: in place, with torch.optim's single-tensor arithmetic, step after step.
def _optimizer_case(name, shape, noncontig, dtype):
    rng = np.random.default_rng(11)
    base = rng.standard_normal(shape).astype(dtype)
    p_ours = torch.from_numpy(base.copy())
    if noncontig:  # a transposed parameter: stepped through a contiguous copy and written back
        p_ours = torch.from_numpy(np.ascontiguousarray(base.T)).T
    p_ref = torch.from_numpy(base.copy()).requires_grad_(True)
    grads = [torch.from_numpy(rng.standard_normal(shape).astype(dtype)) for _ in range(3)]
    return p_ours, p_ref, grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("noncontig", [False, True], ids=["contiguous", "transposed"])
def test_adam_and_adamw_steps(dtype, noncontig):
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-7, "atol": 1e-9}
    for name, torch_cls, wd in (("adam_", torch.optim.Adam, 0.1), ("adamw_", torch.optim.AdamW, 0.05)):
        p, p_ref, grads = _optimizer_case(name, (37, 29), noncontig, dtype)
        opt = torch_cls([p_ref], lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=wd, foreach=False)
        m, v = torch.zeros_like(p), torch.zeros_like(p)
        for step, g in enumerate(grads, start=1):
            out = getattr(dlcore.ops, name)(p, g, m, v, step=step, lr=1e-2, beta1=0.8, beta2=0.95, eps=1e-6,
                                            weight_decay=wd, backend=BACKEND)
            assert out is p
            p_ref.grad = g.clone()
            opt.step()
            assert_close(p, p_ref.detach(), **tol, msg=f"{name} step {step} param")
            assert_close(m, opt.state[p_ref]["exp_avg"], **tol, msg=f"{name} step {step} exp_avg")
            assert_close(v, opt.state[p_ref]["exp_avg_sq"], **tol, msg=f"{name} step {step} exp_avg_sq")


@pytest.mark.parametrize("nesterov", [False, True], ids=["momentum", "nesterov"])
def test_sgd_steps(nesterov):
    p, p_ref, grads = _optimizer_case("sgd_", (130,), False, np.float32)
    opt = torch.optim.SGD([p_ref], lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=0.01, foreach=False)
    buf = None
    for step, g in enumerate(grads, start=1):
        buf = dlcore.ops.sgd_(p, g, buf, lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=0.01, backend=BACKEND)
        assert isinstance(buf, torch.Tensor) and buf.shape == p.shape
        p_ref.grad = g.clone()
        opt.step()
        assert_close(p, p_ref.detach(), rtol=1e-5, atol=1e-6, msg=f"sgd_ step {step} param")
        assert_close(buf, opt.state[p_ref]["momentum_buffer"], rtol=1e-5, atol=1e-6, msg=f"sgd_ step {step} buffer")
    # no momentum: no buffer
    assert dlcore.ops.sgd_(p, grads[0], lr=0.1, backend=BACKEND) is None


# ----------------------------------------------------------------------------------------------------
# Dispatch and explain under the interpreter.
def test_explain_reports_triton_when_asked():
    x = torch.randn(4, 7)
    e = dlcore.explain("softmax", x, backend="triton")
    assert e.backend == "triton"
    assert e.function == "dlcore.kernels.triton.softmax.softmax_forward"
    assert "backend= argument" in e.reason
    assert "'triton'" in str(e)
    with dlcore.backend("triton"):
        e = dlcore.explain("cross_entropy", x, torch.tensor([0, 1, 2, 3]))
        assert e.backend == "triton" and "with dlcore.backend" in e.reason
        e = dlcore.explain("scaled_dot_product_attention", x[None], x[None], x[None])
        assert e.backend == "triton"
        assert dlcore.ops.softmax(x).dtype == torch.float32
    assert dlcore.explain("adamw_", x, x, x, x, step=1, lr=0.1, backend="triton").backend == "triton"


def test_auto_never_picks_the_interpreter_for_cpu_tensors():
    """The interpreter makes 'triton' accept CPU tensors when asked, but 'auto' keeps the CPU backends."""
    e = dlcore.explain("softmax", torch.randn(3, 5))
    assert e.backend in ("numba", "numpy")


def test_triton_refuses_numpy_arrays():
    with pytest.raises(dlcore.BackendError, match="triton"):
        dlcore.ops.softmax(np.ones((2, 3), np.float32), backend="triton")
