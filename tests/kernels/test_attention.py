"""attention kernels (every CPU backend) against torch's scaled_dot_product_attention, forward and backward.

The reference is torch 2.13 in float64 on the (dtype-rounded) inputs, gradients by autograd through
``F.scaled_dot_product_attention`` with a random upstream gradient; lse is torch.logsumexp of the scaled
masked scores. Torch 2.13's policy, checked on the CPU for float32 and float64 (math and flash paths): a
query row whose keys are all masked (bool all False, float all -inf, or S == 0) gives output 0 and zero
gradients ("safe softmax"); L == 0 gives empty outputs. dlcore's lse is -inf for such a row (torch's flash
kernel stores 0 there; it is not part of torch's public output). Torch lets a NaN in a masked-out V row leak
into the output (0 * NaN); dlcore masks with a select, so masked K/V values never matter (RELIABILITY 8).
"""
import importlib
import threading
import zlib

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests._compare import assert_close, rand

BACKENDS = ["numpy", "numba"]
DTYPES = [np.float32, np.float64]
# (B, L, S, E, Ev): L = S = 1; short queries over long keys and the reverse (crossing the numba block sizes:
# forward 96 queries x 128 keys, backward 48 keys x 96 queries); E != Ev; batch 3; L == S over several blocks.
SHAPES = [(1, 1, 1, 8, 8), (2, 7, 129, 16, 24), (2, 129, 7, 64, 64), (3, 33, 40, 64, 64),
          (1, 200, 200, 32, 16)]
MASKS = ["none", "causal", "bool", "float", "bool_broadcast", "float_broadcast"]
# float32 kernels accumulate in float32 (like torch's CPU flash kernel): output errors are a few ulp of the
# row's magnitude; gradients sum L or S products of O(1) terms, so they get a wider absolute floor.
TOL = {
    np.dtype(np.float32): {"out": {"rtol": 1e-5, "atol": 5e-6}, "grad": {"rtol": 1e-4, "atol": 3e-5}},
    np.dtype(np.float64): {"out": {"rtol": 1e-10, "atol": 1e-12}, "grad": {"rtol": 1e-9, "atol": 1e-11}},
}


@pytest.fixture(autouse=True, scope="module")
def _torch_one_thread():
    # The references are tiny: torch's intra-op threads only spin (50x the CPU time on a busy 2-core box).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def kernels(backend):
    return importlib.import_module(f"dlcore.kernels.{backend}.attention")


def make_inputs(shape, dtype, seed):
    B, L, S, E, Ev = shape
    return rand((B, L, E), dtype, seed), rand((B, S, E), dtype, seed + 1), rand((B, S, Ev), dtype, seed + 2)


def make_mask(kind, B, L, S, dtype, seed):
    """(mask, is_causal) for a MASKS entry; random masks include a fully masked row when L > 1."""
    rng = np.random.default_rng(seed)
    if kind == "none":
        return None, False
    if kind == "causal":
        return None, True
    shape = (L, S) if kind.endswith("broadcast") else (B, L, S)
    keep = rng.random(shape) > 0.3
    if L > 1:
        keep[..., L // 2, :] = False  # a query row that sees no key
    if kind.startswith("bool"):
        mask = keep
    else:
        mask = np.where(keep, rng.standard_normal(shape) * 2.0, -np.inf).astype(dtype)
        mask[..., 0, :1] = -1e4  # large finite negative bias: not masked, just unlikely
    if kind.endswith("broadcast"):
        mask = np.broadcast_to(mask, (B, L, S))  # stride-0 batch dimension, read-only view
        assert mask.strides[0] == 0
    return mask, False


def torch_ref(q, k, v, mask, is_causal, scale, grad):
    """float64 torch: out, lse, (grad_q, grad_k, grad_v) as NumPy arrays."""
    qt, kt, vt = (torch.from_numpy(x.astype(np.float64)).requires_grad_() for x in (q, k, v))
    mt = None
    if mask is not None:
        mt = torch.from_numpy(np.array(mask) if mask.dtype == np.bool_ else np.array(mask, dtype=np.float64))
    out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mt, is_causal=is_causal, scale=scale)
    grads = torch.autograd.grad(out, (qt, kt, vt), torch.from_numpy(grad.astype(np.float64)))
    with torch.no_grad():
        s = qt @ kt.transpose(-1, -2) * scale
        L, S = s.shape[-2:]
        if is_causal:
            s = s.masked_fill(~torch.ones(L, S, dtype=torch.bool).tril(), -torch.inf)
        elif mt is not None and mt.dtype == torch.bool:
            s = s.masked_fill(~mt, -torch.inf)
        elif mt is not None:
            s = s + mt
        lse = torch.logsumexp(s, dim=-1)
    return out.detach().numpy(), lse.numpy(), [g.numpy() for g in grads]


def run(backend, q, k, v, mask, is_causal, scale, grad):
    kern = kernels(backend)
    out, lse = kern.attention_forward(q, k, v, mask, is_causal, scale)
    grads = kern.attention_backward(grad, q, k, v, out, lse, mask, is_causal, scale)
    return out, lse, grads


def check(backend, dtype, q, k, v, mask, is_causal, scale, grad, msg=""):
    out, lse, grads = run(backend, q, k, v, mask, is_causal, scale, grad)
    eout, else_, egrads = torch_ref(q, k, v, mask, is_causal, scale, grad)
    tol = TOL[np.dtype(dtype)]
    assert out.dtype == dtype and lse.dtype == dtype and all(g.dtype == dtype for g in grads)
    assert_close(out, eout, msg=f"{msg} out", **tol["out"])
    assert_close(lse, else_, msg=f"{msg} lse", **tol["out"])
    for name, g, e in zip(("dq", "dk", "dv"), grads, egrads):
        assert_close(g, e, msg=f"{msg} {name}", **tol["grad"])
    return out, lse, grads


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_torch(backend, dtype, shape, kind):
    seed = zlib.crc32(repr((np.dtype(dtype).name, shape, kind)).encode())
    B, L, S, E, Ev = shape
    q, k, v = make_inputs(shape, dtype, seed)
    mask, is_causal = make_mask(kind, B, L, S, dtype, seed + 3)
    grad = rand((B, L, Ev), dtype, seed + 4)
    out, lse, grads = check(backend, dtype, q, k, v, mask, is_causal, 1.0 / np.sqrt(E), grad, msg=kind)
    if mask is not None and L > 1:  # the fully masked row: exact zeros, lse -inf, zero dq
        assert np.all(out[:, L // 2] == 0) and np.all(lse[:, L // 2] == -np.inf)
        assert np.all(grads[0][:, L // 2] == 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend", BACKENDS)
def test_scale_and_large_scores(backend, dtype):
    # A non-default scale and scores around 1e2: the online softmax must rescale its running sums.
    shape = (2, 50, 300, 16, 8)
    q, k, v = make_inputs(shape, dtype, 5)
    k[:, 200:] *= 6.0  # later key tiles carry much larger scores: the running max changes mid-row
    grad = rand((2, 50, 8), dtype, 6)
    check(backend, dtype, q, k, v, None, False, 0.9, grad)


@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend", BACKENDS)
def test_fully_masked_rows_match_torch(backend, dtype, kind):
    # RELIABILITY 8: torch's own dtype and kernels (flash path for 4-D inputs) give zeros and zero gradients.
    B, L, S, E = 2, 5, 140, 8
    q, k, v = make_inputs((B, L, S, E, E), dtype, 7)
    keep = np.ones((B, L, S), bool)
    keep[0, 1] = keep[1, 4] = keep[:, 2] = False
    mask = keep if kind == "bool" else np.where(keep, 0.0, -np.inf).astype(dtype)
    grad = rand((B, L, E), dtype, 8)
    out, lse, (gq, gk, gv) = check(backend, dtype, q, k, v, mask, False, 0.5, grad)
    qt, kt, vt = (torch.from_numpy(x[None]).requires_grad_() for x in (q, k, v))
    ot = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=torch.from_numpy(mask[None]), scale=0.5)
    tg = torch.autograd.grad(ot, (qt, kt, vt), torch.from_numpy(grad[None]))
    dead = ~keep.any(axis=2)
    assert np.all(ot[0].detach().numpy()[dead] == 0) and np.all(tg[0][0].numpy()[dead] == 0)  # torch: zeros
    assert np.all(out[dead] == 0) and np.all(gq[dead] == 0) and np.all(lse[dead] == -np.inf)
    assert np.all(np.isfinite(gk)) and np.all(np.isfinite(gv))


@pytest.mark.parametrize("kind", ["bool", "float", "causal"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_nan_and_huge_keys_values(backend, dtype, kind):
    # RELIABILITY 8: NaN / 1e10 in masked-out K and V rows change nothing (a select, not a multiply).
    B, L, S, E = 2, 9, 150, 8
    q, k, v = make_inputs((B, L, S, E, E), dtype, 9)
    grad = rand((B, L, E), dtype, 10)
    if kind == "causal":  # keys past the last query are masked for every row
        mask, causal, dead = None, True, [L + 3, L + 60, S - 1]
    else:
        dead = [3, 70, 140]  # in different key tiles / blocks
        keep = np.ones((B, L, S), bool)
        keep[:, :, dead] = False
        mask = keep if kind == "bool" else np.where(keep, 0.0, -np.inf).astype(dtype)
        causal = False
    clean = run(backend, q, k, v, mask, causal, 0.3, grad)
    kp, vp = k.copy(), v.copy()
    kp[:, dead[0]], vp[:, dead[0]] = np.nan, np.nan
    kp[:, dead[1]], vp[:, dead[1]] = 1e10, -1e10
    kp[:, dead[2]], vp[:, dead[2]] = np.inf, np.nan
    out, lse, (gq, gk, gv) = run(backend, q, kp, vp, mask, causal, 0.3, grad)
    tol = TOL[np.dtype(dtype)]
    assert_close(out, clean[0], **tol["out"])
    assert_close(lse, clean[1], **tol["out"])
    assert_close(gq, clean[2][0], **tol["grad"])
    live = np.setdiff1d(np.arange(S), dead)
    assert_close(gk[:, live], clean[2][1][:, live], **tol["grad"])
    assert_close(gv, clean[2][2], **tol["grad"])
    assert np.all(gk[:, dead] == 0) and np.all(gv[:, dead] == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_visible_to_some_rows(backend):
    # A NaN value masked for some query rows only: those rows are untouched (torch's are NaN too: 0 * NaN),
    # the rows that see it are NaN as in torch.
    B, L, S, E = 1, 6, 20, 4
    q, k, v = make_inputs((B, L, S, E, E), np.float64, 11)
    keep = np.ones((B, L, S), bool)
    keep[:, :3, 5] = False
    vp = v.copy()
    vp[:, 5] = np.nan
    grad = rand((B, L, E), np.float64, 12)
    out, _, _ = run(backend, q, k, vp, keep, False, 0.5, grad)
    eout, _, _ = torch_ref(q, k, vp, keep, False, 0.5, grad)
    clean, _, _ = run(backend, q, k, v, keep, False, 0.5, grad)
    assert np.all(np.isnan(out[:, 3:])) and np.all(np.isnan(eout[:, 3:]))
    assert_close(out[:, :3], clean[:, :3])


@pytest.mark.parametrize("bad", [np.inf, np.nan])
@pytest.mark.parametrize("backend", BACKENDS)
def test_float_mask_inf_or_nan_poisons_row(backend, bad):
    # RELIABILITY 7: +inf or NaN in a float mask makes that query row NaN, as in torch.
    q, k, v = make_inputs((1, 4, 6, 4, 4), np.float64, 13)
    mask = np.zeros((1, 4, 6))
    mask[0, 2, 3] = bad
    out, _, _ = run(backend, q, k, v, mask, False, 0.5, np.ones((1, 4, 4)))
    eout, _, _ = torch_ref(q, k, v, mask, False, 0.5, np.ones((1, 4, 4)))
    assert np.all(np.isnan(out[0, 2])) and np.all(np.isnan(eout[0, 2]))
    assert_close(out, eout)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_views(backend, dtype):
    # RELIABILITY 3: a transposed, a negatively strided and a batch-broadcast mask give the contiguous result.
    B, L, S, E = 3, 10, 12, 8
    q, k, v = make_inputs((B, L, S, E, E), dtype, 14)
    grad = rand((B, L, E), dtype, 15)
    rng = np.random.default_rng(16)
    base = rng.random((B, L, S)) > 0.4
    views = [
        np.ascontiguousarray(base.transpose(0, 2, 1)).transpose(0, 2, 1),
        np.ascontiguousarray(base[:, ::-1])[:, ::-1],
        np.broadcast_to(base[:1], (B, L, S)),
    ]
    expected = [base, base, np.broadcast_to(base[:1], (B, L, S)).copy()]
    for view, full in zip(views, expected):
        additive = (np.where(view, 0.5, -np.inf).astype(dtype), np.where(full, 0.5, -np.inf).astype(dtype))
        for m_view, m_full in ((view, full), additive):
            got = run(backend, q, k, v, m_view, False, 0.4, grad)
            ref = run(backend, q, k, v, np.ascontiguousarray(m_full), False, 0.4, grad)
            for a, b in zip(_flat(got), _flat(ref)):
                assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("shape", [(2, 0, 3, 4, 5), (2, 3, 0, 4, 5), (0, 3, 3, 4, 5), (2, 0, 0, 4, 5)],
                         ids=str)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty(backend, shape, causal):
    # RELIABILITY 1: torch gives an empty output for L == 0 and zeros (zero gradients) for S == 0.
    B, L, _, _, Ev = shape
    q, k, v = make_inputs(shape, np.float32, 17)
    grad = rand((B, L, Ev), np.float32, 18)
    out, lse, (gq, gk, gv) = run(backend, q, k, v, None, causal, 0.5, grad)
    eout, _, egrads = torch_ref(q, k, v, None, causal, 0.5, grad)
    assert out.shape == (B, L, Ev) and lse.shape == (B, L)
    assert gq.shape == q.shape and gk.shape == k.shape and gv.shape == v.shape
    assert_close(out, eout)
    assert np.all(lse == -np.inf)
    for g, e in zip((gq, gk, gv), egrads):
        assert_close(g, e)


@pytest.mark.parametrize("kind", ["none", "causal", "bool", "float"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_finite_differences(backend, kind):
    # RELIABILITY 15: float64 backward against central differences (eps 1e-6, atol 1e-5, rtol 1e-3).
    B, L, S, E, Ev = 1, 3, 4, 3, 2
    q, k, v = make_inputs((B, L, S, E, Ev), np.float64, 19)
    mask, causal = make_mask(kind, B, L, S, np.float64, 20)
    w = rand((B, L, Ev), np.float64, 21)
    kern = kernels(backend)
    _, _, grads = run(backend, q, k, v, mask, causal, 0.7, w)
    eps = 1e-6
    for x, g in zip((q, k, v), grads):
        fd = np.empty_like(x)
        for idx in np.ndindex(x.shape):
            orig = x[idx]
            x[idx] = orig + eps
            fp = np.sum(kern.attention_forward(q, k, v, mask, causal, 0.7)[0] * w)
            x[idx] = orig - eps
            fm = np.sum(kern.attention_forward(q, k, v, mask, causal, 0.7)[0] * w)
            x[idx] = orig
            fd[idx] = (fp - fm) / (2 * eps)
        assert_close(g, fd, rtol=1e-3, atol=1e-5)


def _flat(result):
    out, lse, grads = result
    return [out, lse, *grads]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_numba_deterministic(dtype):
    # RELIABILITY 18: bitwise-equal results twice and with 1 thread vs all threads (the task split and every
    # reduction order depend on the shape only).
    shape = (3, 100, 150, 16, 16)
    q, k, v = make_inputs(shape, dtype, 22)
    grad = rand((3, 100, 16), dtype, 23)
    for causal in (False, True):
        r1 = run("numba", q, k, v, None, causal, 0.25, grad)
        r2 = run("numba", q, k, v, None, causal, 0.25, grad)
        n = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            r3 = run("numba", q, k, v, None, causal, 0.25, grad)
        finally:
            numba.set_num_threads(n)
        for a, b, c in zip(_flat(r1), _flat(r2), _flat(r3)):
            assert a.tobytes() == b.tobytes() == c.tobytes()


def test_numba_concurrent_calls():
    # RELIABILITY 19: several Python threads calling the kernels at once get the serial results.
    shape = (2, 60, 70, 16, 16)
    q, k, v = make_inputs(shape, np.float32, 24)
    grad = rand((2, 60, 16), np.float32, 25)
    want = run("numba", q, k, v, None, True, 0.25, grad)
    got, errors = [None] * 4, []

    def work(i):
        try:
            got[i] = run("numba", q, k, v, None, True, 0.25, grad)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in got:
        assert all(a.tobytes() == b.tobytes() for a, b in zip(_flat(r), _flat(want)))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_numba_exp(dtype):
    # The vectorisable exp behind the numba kernels: <= 2 ulp in the range softmax uses, exact specials.
    from dlcore.kernels.numba import attention as nb

    @numba.njit(fastmath=nb._FASTMATH)
    def vexp(x, out):
        for i in range(x.shape[0]):
            out[i] = nb._fexp(x[i])

    lo = -87.0 if dtype == np.float32 else -708.0
    x = np.linspace(lo, 1.0, 100_001).astype(dtype)
    out = np.empty_like(x)
    vexp(x, out)
    ref = np.exp(x.astype(np.float64))
    ulp = np.abs(out - ref) / np.spacing(ref.astype(dtype)).astype(np.float64)
    assert ulp.max() <= 2.0
    special = np.array([-np.inf, np.nan, 0.0, lo - 1.0], dtype)
    vexp(special, out[:4])
    assert out[0] == 0 and np.isnan(out[1]) and out[2] == 1 and out[3] == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("kind", ["none", "causal", "bool"])
def test_numba_many_blocks_and_batches(dtype, kind):
    # Several query blocks (96 rows) and key tiles (128) per batch entry and several batch entries: the
    # dynamic task order (causal: the largest blocks first, across batch entries) and the causal diagonal
    # tiles (masked only where they cross the diagonal) against torch.
    shape = (3, 290, 290, 32, 32)
    q, k, v = make_inputs(shape, dtype, 31)
    mask, is_causal = make_mask(kind, 3, 290, 290, dtype, 32)
    check("numba", dtype, q, k, v, mask, is_causal, 0.2, rand((3, 290, 32), dtype, 33), msg=kind)


def test_numba_peak_memory_linear_in_length():
    # No (L, S) matrix: the NumPy memory of forward + backward (tracemalloc peak: the launchers' packed
    # operands, outputs and partial dQ; the workers' tiles are fixed-size) grows linearly in L = S.
    import tracemalloc

    E = 32  # a multiple of every panel width (16 float32 columns with AVX2, 32 with AVX-512): no padding
    peaks = {}
    for L in (1024, 4096):
        q, k, v = make_inputs((1, L, L, E, E), np.float32, 40)
        grad = rand((1, L, E), np.float32, 41)
        run("numba", q[:, :8], k[:, :8], v[:, :8], None, True, 0.25, grad[:, :8])  # compile outside the trace
        tracemalloc.start()
        try:
            run("numba", q, k, v, None, True, 0.25, grad)
            peaks[L] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    io_bytes = 4096 * E * 4  # one (L, E) float32 array
    assert peaks[4096] < 40 * io_bytes, peaks  # O(L E): forward ~3, backward ~25 such arrays
    assert peaks[4096] < 4096 * 4096 * 4 / 4, peaks  # far below one (L, S) float32 matrix
    assert peaks[4096] / peaks[1024] < 5.0, peaks  # 4x the length: ~4x the memory (16x if it were L*S)


def test_vector_width_follows_the_features_numba_compiles_for():
    # The micro-kernel's vector width sets the packed panel layouts, so it must come from the same feature
    # string that keys Numba's cache (a cached AVX-512 kernel must never meet AVX2-width panels).
    from numba.core import config
    from numba.core.codegen import get_host_cpu_features

    from tests.numba_avx2_features import avx2_features

    A = importlib.import_module("dlcore.kernels.numba.attention")
    features = str(config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features())
    assert A.numba_target_features() == features.split(",")
    expected = 64 if "+avx512f" in features.split(",") else 32
    assert A._VECTOR_BYTES == expected
    assert A._panel_width(np.float32) == expected // 2 and A._panel_width(np.float64) == expected // 4
    off = avx2_features()  # what `make test` uses for its second, AVX2-width pass on AVX-512 hosts
    assert off == "" if expected == 32 else ("+avx512" not in off and "-avx512f" in off.split(","))
