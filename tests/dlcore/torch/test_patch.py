"""dlcore.torch.patch: torch.nn.functional routed to dlcore gives torch's values and gradients.

Every case runs torch's own function (unpatched) and the patched one on the same inputs, compares the
outputs and the gradients of every input that requires grad, and reads `patch_stats` to check which side
actually ran: dlcore for the arguments it implements, torch (with the stated reason) for the rest.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

import dlcore
import dlcore.torch
from tests._compare import assert_close

ORIGINALS = {name: getattr(F, name) for name in dlcore.torch.PATCHED_FUNCTIONS}
TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-6}, torch.float64: {"rtol": 1e-10, "atol": 1e-12}}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # small tensors: thread pools (numba's, torch's) only add synchronisation on a shared test machine
    n, nt = dlcore.get_num_threads(), torch.get_num_threads()
    dlcore.set_num_threads(1)
    torch.set_num_threads(1)
    yield
    dlcore.set_num_threads(n)
    torch.set_num_threads(nt)


@pytest.fixture(autouse=True)
def _fresh_stats():
    dlcore.torch.reset_patch_stats()
    yield
    for name, f in ORIGINALS.items():  # no test may leave a wrapper behind
        assert getattr(F, name) is f, f"F.{name} was not restored"


def _rand(*shape, dtype=torch.float64, seed=0, grad=True, scale=1.0):
    g = torch.Generator().manual_seed(seed + 7 * len(shape))
    return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_(grad)


def _targets(n, c, seed=0):
    return torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed))


# name -> builder(dtype) -> (function name, args, kwargs); float tensors that require grad get compared
CASES = {
    "softmax_dim1": lambda dt: ("softmax", (_rand(3, 5, 4, dtype=dt),), {"dim": 1}),
    "softmax_last": lambda dt: ("softmax", (_rand(4, 9, dtype=dt, scale=30.0), -1), {}),
    "log_softmax": lambda dt: ("log_softmax", (_rand(6, 7, dtype=dt),), {"dim": -1}),
    "log_softmax_dim0": lambda dt: ("log_softmax", (_rand(5, 3, dtype=dt), 0), {}),
    "sdpa": lambda dt: ("scaled_dot_product_attention",
                        (_rand(2, 2, 5, 8, dtype=dt), _rand(2, 2, 6, 8, dtype=dt, seed=1),
                         _rand(2, 2, 6, 4, dtype=dt, seed=2)), {}),
    "sdpa_causal_scale": lambda dt: ("scaled_dot_product_attention",
                                     (_rand(2, 6, 8, dtype=dt), _rand(2, 6, 8, dtype=dt, seed=1),
                                      _rand(2, 6, 8, dtype=dt, seed=2)), {"is_causal": True, "scale": 0.3}),
    "sdpa_bool_mask": lambda dt: ("scaled_dot_product_attention",
                                  (_rand(2, 2, 5, 8, dtype=dt), _rand(2, 2, 6, 8, dtype=dt, seed=1),
                                   _rand(2, 2, 6, 8, dtype=dt, seed=2),
                                   torch.rand(5, 6, generator=torch.Generator().manual_seed(3)) > 0.3), {}),
    "sdpa_float_mask": lambda dt: ("scaled_dot_product_attention",
                                   (_rand(2, 2, 5, 8, dtype=dt), _rand(2, 2, 6, 8, dtype=dt, seed=1),
                                    _rand(2, 2, 6, 8, dtype=dt, seed=2)),
                                   {"attn_mask": _rand(2, 1, 5, 6, dtype=dt, seed=4, grad=False)}),
    "cross_entropy": lambda dt: ("cross_entropy", (_rand(6, 5, dtype=dt), _targets(6, 5)), {}),
    "cross_entropy_options": lambda dt: ("cross_entropy",
                                         (_rand(6, 5, dtype=dt), torch.tensor([0, 4, -1, 2, 2, 1])),
                                         {"ignore_index": -1, "label_smoothing": 0.1, "reduction": "sum"}),
    "cross_entropy_spatial": lambda dt: ("cross_entropy",
                                         (_rand(2, 4, 3, dtype=dt), _targets(6, 4).reshape(2, 3)),
                                         {"reduction": "none"}),
    "bce_with_logits": lambda dt: ("binary_cross_entropy_with_logits",
                                   (_rand(4, 6, dtype=dt), torch.rand(4, 6, dtype=dt)), {}),
    "bce_pos_weight": lambda dt: ("binary_cross_entropy_with_logits",
                                  (_rand(4, 6, dtype=dt), torch.rand(4, 6, dtype=dt).requires_grad_()),
                                  {"pos_weight": torch.rand(6, dtype=dt) + 0.5, "reduction": "sum"}),
    "mse_loss": lambda dt: ("mse_loss", (_rand(4, 6, dtype=dt), _rand(4, 6, dtype=dt, seed=1)), {}),
    "mse_loss_none": lambda dt: ("mse_loss", (_rand(3, 5, dtype=dt), _rand(3, 5, dtype=dt, seed=1, grad=False)),
                                 {"reduction": "none"}),
    "layer_norm": lambda dt: ("layer_norm", (_rand(3, 4, 6, dtype=dt), (4, 6), _rand(4, 6, dtype=dt, seed=1),
                                             _rand(4, 6, dtype=dt, seed=2)), {"eps": 1e-6}),
    "layer_norm_plain": lambda dt: ("layer_norm", (_rand(5, 8, dtype=dt), [8]), {}),
    "gelu": lambda dt: ("gelu", (_rand(4, 7, dtype=dt, scale=3.0),), {}),
    "gelu_tanh": lambda dt: ("gelu", (_rand(4, 7, dtype=dt, scale=3.0),), {"approximate": "tanh"}),
}


def _leaves(args, kwargs):
    return [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.requires_grad]


def _run(fn, args, kwargs):
    """Output and input gradients of ``fn`` on fresh copies of the inputs (same upstream gradient)."""
    cp = lambda a: a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
    args, kwargs = tuple(cp(a) for a in args), {k: cp(v) for k, v in kwargs.items()}
    out = fn(*args, **kwargs)
    upstream = torch.linspace(-1, 2, out.numel(), dtype=out.dtype).reshape(out.shape)
    leaves = _leaves(args, kwargs)
    grads = torch.autograd.grad(out, leaves, upstream) if leaves else ()
    return out, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", list(CASES))
def test_patched_function_matches_torch_and_runs_on_dlcore(case, dtype):
    name, args, kwargs = CASES[case](dtype)
    expected, expected_grads = _run(ORIGINALS[name], args, kwargs)
    with dlcore.torch.patch() as p:
        actual, actual_grads = _run(getattr(F, name), args, kwargs)
    assert actual.dtype == expected.dtype
    assert_close(actual, expected, msg=f"{case} output", **TOL[dtype])
    assert len(actual_grads) == len(expected_grads) > 0
    for i, (a, e) in enumerate(zip(actual_grads, expected_grads)):
        assert_close(a, e, msg=f"{case} grad {i}", **TOL[dtype])
    assert p.stats[name] == {"dlcore": 1, "torch": 0, "reasons": {}}
    assert dlcore.torch.patch_stats()[name]["dlcore"] == 1


def test_implicit_softmax_dim_warns_and_picks_torchs_dim():
    x = _rand(2, 3, 4)
    with pytest.warns(UserWarning, match="Implicit dimension choice for softmax"):
        expected = ORIGINALS["softmax"](x)
    with dlcore.torch.patch() as p, pytest.warns(UserWarning, match="Implicit dimension choice for softmax") as rec:
        actual = F.softmax(x)
    assert rec[0].filename == __file__  # points at the caller, as torch's does
    assert_close(actual, expected)
    assert p.stats["softmax"]["dlcore"] == 1


def test_mse_loss_broadcast_warns_like_torch():
    x, y = _rand(4, 6), _rand(6, seed=1)
    with pytest.warns(UserWarning, match="Using a target size"):
        expected = ORIGINALS["mse_loss"](x, y)
    with dlcore.torch.patch() as p, pytest.warns(UserWarning, match="Using a target size"):
        actual = F.mse_loss(x, y)
    assert_close(actual, expected)
    assert p.stats["mse_loss"]["dlcore"] == 1


# name -> (function, args, kwargs, reason): arguments dlcore does not implement; torch's function runs
def _fallback_cases():
    q, k, v = _rand(2, 2, 5, 8, dtype=torch.float32), _rand(2, 2, 5, 8, seed=1, dtype=torch.float32), \
        _rand(2, 2, 5, 8, seed=2, dtype=torch.float32)
    x = _rand(6, 5, dtype=torch.float32)
    return {
        "sdpa_dropout": ("scaled_dot_product_attention", (q, k, v), {"dropout_p": 0.1}, "dropout_p > 0"),
        "sdpa_gqa": ("scaled_dot_product_attention", (_rand(1, 4, 5, 8), _rand(1, 2, 5, 8, seed=1),
                                                      _rand(1, 2, 5, 8, seed=2)), {"enable_gqa": True},
                     "enable_gqa=True"),
        "sdpa_learned_mask": ("scaled_dot_product_attention", (q, k, v),
                              {"attn_mask": _rand(2, 1, 5, 5, seed=3, dtype=torch.float32)}, "attn_mask requires grad"),
        "ce_weight": ("cross_entropy", (x, _targets(6, 5)), {"weight": torch.rand(5)}, "weight= given"),
        "ce_probs": ("cross_entropy", (x, torch.rand(6, 5).softmax(-1)), {}, "probability targets"),
        "ce_legacy": ("cross_entropy", (x, _targets(6, 5)), {"reduce": False}, "legacy size_average/reduce"),
        "softmax_dtype": ("softmax", (x,), {"dim": -1, "dtype": torch.float64}, "dtype= given"),
        "log_softmax_dtype": ("log_softmax", (x,), {"dim": 0, "dtype": torch.float64}, "dtype= given"),
        "bce_weight": ("binary_cross_entropy_with_logits", (x, torch.rand(6, 5)), {"weight": torch.rand(5)},
                       "weight= given"),
        "bce_learned_pos_weight": ("binary_cross_entropy_with_logits", (x, torch.rand(6, 5)),
                                   {"pos_weight": torch.rand(5, requires_grad=True)}, "pos_weight requires grad"),
        "mse_weight": ("mse_loss", (x, torch.rand(6, 5)), {"weight": torch.rand(6, 5)}, "weight= given"),
        "gelu_half": ("gelu", (torch.randn(5, dtype=torch.float16, requires_grad=True),), {},
                      "dtype float16 on cpu"),
        "layer_norm_mixed": ("layer_norm", (x, (5,), torch.rand(5, dtype=torch.float64)), {}, "mixed dtypes"),
        "ce_int32_target": ("cross_entropy", (x, _targets(6, 5).int()), {}, "target dtype torch.int32"),
    }


FALLBACKS = _fallback_cases()


def _torch_result(fn, args, kwargs):
    try:
        torch.manual_seed(0)
        return _run(fn, args, kwargs), None
    except Exception as e:  # noqa: BLE001 - torch may reject some combinations itself
        return None, e


@pytest.mark.parametrize("case", list(FALLBACKS))
def test_unsupported_arguments_fall_back_to_torch_exactly(case):
    name, args, kwargs, reason = FALLBACKS[case]
    expected, err = _torch_result(ORIGINALS[name], args, kwargs)
    with dlcore.torch.patch() as p:
        actual, err2 = _torch_result(getattr(F, name), args, kwargs)
    if err is not None:  # torch itself raises: so must the patched function, with torch's error
        assert type(err2) is type(err) and str(err2) == str(err)
    else:
        assert err2 is None
        assert torch.equal(actual[0], expected[0])
        for a, e in zip(actual[1], expected[1]):
            assert torch.equal(a, e)
    assert p.stats[name] == {"dlcore": 0, "torch": 1, "reasons": {reason: 1}}


def test_arguments_dlcore_rejects_get_torchs_own_error():
    x, t = _rand(4, 3), torch.tensor([0, 1, 7, 2])
    with pytest.raises(IndexError) as expected:
        ORIGINALS["cross_entropy"](x, t)
    with dlcore.torch.patch() as p, pytest.raises(IndexError) as actual:
        F.cross_entropy(x, t)
    assert str(actual.value) == str(expected.value)
    (reason,) = p.stats["cross_entropy"]["reasons"]
    assert reason.startswith("dlcore rejected the arguments (IndexError")


def test_vmap_falls_back():
    x = _rand(3, 4, grad=False)
    with dlcore.torch.patch() as p:
        out = torch.func.vmap(lambda r: F.softmax(r, dim=-1))(x)
    assert_close(out, ORIGINALS["softmax"](x, dim=-1))
    assert p.stats["softmax"]["reasons"] == {"functorch transform (vmap/grad/jvp)": 1}


# ------------------------------------------------------------------------------------------------
# Installing and restoring.
def test_restored_after_block_and_after_exceptions_and_nesting():
    with dlcore.torch.patch() as outer:
        assert F.softmax is not ORIGINALS["softmax"]
        with dlcore.torch.patch() as inner:
            F.gelu(_rand(3))
        assert F.softmax is not ORIGINALS["softmax"]  # still inside the outer block
        F.gelu(_rand(3))
    assert F.softmax is ORIGINALS["softmax"] and F.gelu is ORIGINALS["gelu"]
    assert inner.stats["gelu"]["dlcore"] == 1 and outer.stats["gelu"]["dlcore"] == 2
    assert dlcore.torch.patch_stats()["gelu"]["dlcore"] == 2

    with pytest.raises(RuntimeError, match="boom"), dlcore.torch.patch():
        raise RuntimeError("boom")
    assert F.softmax is ORIGINALS["softmax"]


def test_reference_kept_from_inside_a_patch_calls_torch_afterwards():
    with dlcore.torch.patch():
        kept = F.layer_norm
    out = kept(_rand(2, 4), (4,))
    assert_close(out, ORIGINALS["layer_norm"](_rand(2, 4), (4,)))
    assert dlcore.torch.patch_stats()["layer_norm"] == {"dlcore": 0, "torch": 0, "reasons": {}}


class _Tiny(torch.nn.Module):
    def __init__(self, fail=False):
        super().__init__()
        self.norm, self.proj, self.fail = torch.nn.LayerNorm(4), torch.nn.Linear(4, 3), fail

    def forward(self, x):
        assert F.layer_norm is not ORIGINALS["layer_norm"]  # routed while the forward runs
        if self.fail:
            raise RuntimeError("forward failed")
        return F.log_softmax(self.proj(self.norm(x)), dim=-1)


def test_patch_model_routes_its_forward_and_unpatch_removes_it():
    torch.manual_seed(0)
    model = _Tiny()
    assert dlcore.torch.patch(model) is model
    assert dlcore.torch.patch(model) is model  # twice is harmless
    x = _rand(5, 4, dtype=torch.float32)
    out = model(x)
    assert F.layer_norm is ORIGINALS["layer_norm"]  # only during forward
    out.sum().backward()  # dlcore's autograd nodes need no routing
    stats = dlcore.torch.patch_stats()
    assert stats["layer_norm"]["dlcore"] == 1 and stats["log_softmax"]["dlcore"] == 1

    twin = copy.deepcopy(model)
    twin(x)
    assert dlcore.torch.patch_stats()["layer_norm"]["dlcore"] == 2  # a deep copy stays patched
    dlcore.torch.unpatch(twin)
    model(x)
    assert dlcore.torch.patch_stats()["layer_norm"]["dlcore"] == 3  # unpatching the copy left the original

    dlcore.torch.unpatch(model)
    with pytest.raises(AssertionError):
        model(x)  # F is torch's again inside forward
    dlcore.torch.unpatch(model)  # unpatching twice is harmless


def test_patch_model_restores_when_forward_raises():
    model = dlcore.torch.patch(_Tiny(fail=True))
    with pytest.raises(RuntimeError, match="forward failed"):
        model(_rand(2, 4, dtype=torch.float32))
    assert F.layer_norm is ORIGINALS["layer_norm"]


# ------------------------------------------------------------------------------------------------
# Whole models.
def _encoder(seed=0):
    torch.manual_seed(seed)
    layer = torch.nn.TransformerEncoderLayer(32, 2, dim_feedforward=64, dropout=0.0, batch_first=True)
    return torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).train()


def _encoder_loss(model, x, proj):
    return (model(x, mask=torch.nn.Transformer.generate_square_subsequent_mask(x.shape[1]), is_causal=True)
            * proj).mean()


def test_transformer_encoder_forward_backward_matches_torch():
    ref, ours = _encoder(), _encoder()
    x, proj = _rand(3, 7, 32, dtype=torch.float32, grad=False), _rand(32, seed=1, dtype=torch.float32, grad=False)
    kpm = torch.zeros(3, 7, dtype=torch.bool)
    kpm[2, 5:] = True
    for kw in ({}, {"src_key_padding_mask": kpm}):
        ref.zero_grad()
        ours.zero_grad()
        y_ref = ref(x, **kw)
        with dlcore.torch.patch() as p:
            y = ours(x, **kw)
        assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
        (y_ref * proj).sum().backward()
        (y * proj).sum().backward()
        for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
            assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5, msg=name)
        # train mode: MultiheadAttention -> F.multi_head_attention_forward -> F.scaled_dot_product_attention;
        # nn.LayerNorm -> F.layer_norm (2 per layer); the activation is F.relu (not patched)
        assert p.stats["scaled_dot_product_attention"] == {"dlcore": 2, "torch": 0, "reasons": {}}
        assert p.stats["layer_norm"] == {"dlcore": 4, "torch": 0, "reasons": {}}


def test_transformer_encoder_training_curve_matches_torch():
    ref, ours = _encoder(), _encoder()
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=3e-3, foreach=False)
    opt = dlcore.torch.AdamW(ours.parameters(), lr=3e-3)
    dlcore.torch.patch(ours)
    g = torch.Generator().manual_seed(5)
    proj = torch.randn(32, generator=g)
    curves = ([], [])
    for _ in range(50):
        x = torch.randn(4, 6, 32, generator=g)
        for model, o, curve in ((ref, opt_ref, curves[0]), (ours, opt, curves[1])):
            o.zero_grad()
            loss = _encoder_loss(model, x, proj)
            loss.backward()
            o.step()
            curve.append(loss.item())
    assert_close(torch.tensor(curves[1]), torch.tensor(curves[0]), rtol=1e-4, atol=1e-5)
    assert curves[0][-1] < curves[0][0]  # it did train
    stats = dlcore.torch.patch_stats()
    assert stats["scaled_dot_product_attention"]["dlcore"] == 100 and stats["layer_norm"]["dlcore"] == 200
    assert opt.dlcore_stats["torch"] == 0


def test_gpt2_forward_loss_backward_matches_torch():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=64, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    ref = transformers.GPT2LMHeadModel(cfg).train()
    ours = dlcore.torch.patch(copy.deepcopy(ref))
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))
    attention = torch.ones(2, 12, dtype=torch.long)
    attention[1, 9:] = 0  # a padded row: sdpa then gets an explicit mask instead of is_causal
    for kw in ({}, {"attention_mask": attention}):
        ref.zero_grad()
        ours.zero_grad()
        dlcore.torch.reset_patch_stats()
        out_ref, out = ref(ids, labels=ids, **kw), ours(ids, labels=ids, **kw)
        assert_close(out.logits, out_ref.logits, rtol=1e-5, atol=1e-5)
        assert_close(out.loss, out_ref.loss, rtol=1e-6, atol=1e-6)
        out_ref.loss.backward()
        out.loss.backward()
        for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
            assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5, msg=name)
        stats = dlcore.torch.patch_stats()
        # GPT-2 (transformers 5): sdpa_attention_forward -> F.scaled_dot_product_attention (one per layer),
        # nn.LayerNorm -> F.layer_norm (2 per block + ln_f), ForCausalLMLoss -> F.cross_entropy;
        # its "gelu_new" activation is written out in torch ops, so F.gelu is never called.
        assert stats["scaled_dot_product_attention"] == {"dlcore": 2, "torch": 0, "reasons": {}}
        assert stats["layer_norm"] == {"dlcore": 5, "torch": 0, "reasons": {}}
        assert stats["cross_entropy"] == {"dlcore": 1, "torch": 0, "reasons": {}}
        assert stats["gelu"]["dlcore"] == stats["softmax"]["dlcore"] == 0


def test_patch_model_routes_an_activation_stored_at_construction():
    """TransformerEncoderLayer(activation='gelu') keeps F.gelu as an attribute: patch(model) points it at the
    wrapper (gelu routed, same numbers), and unpatch(model) gives torch's function back."""
    torch.manual_seed(0)
    ref = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, activation="gelu", batch_first=True)
    ours = copy.deepcopy(ref)
    original = ours.activation
    dlcore.torch.patch(ours)
    assert ours.activation is not original
    x = _rand(2, 5, 16, dtype=torch.float32, grad=False)
    dlcore.torch.reset_patch_stats()
    y = ours(x)
    assert dlcore.torch.patch_stats()["gelu"] == {"dlcore": 1, "torch": 0, "reasons": {}}
    assert_close(y, ref(x), rtol=1e-5, atol=1e-5)
    y.sum().backward()
    ref(x).sum().backward()
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5, msg=name)
    assert ours.activation(x) is not None  # outside a forward: torch's function, not counted
    assert dlcore.torch.patch_stats()["gelu"]["dlcore"] == 1
    dlcore.torch.unpatch(ours)
    assert ours.activation is original
