"""Training steps (forward + backward + optimizer step) against PyTorch eager, same model, weights and batches.

Three cases (issue 5):

* ``lm``: a 4-layer causal transformer LM, d_model 256, 4 heads, seq 256, batch 16, vocab 256: token +
  learned position embeddings, pre-norm TransformerEncoderLayer blocks (MLP 4*d, GELU, no dropout), final
  LayerNorm, linear head, cross-entropy, AdamW. dlcore (dlcore.nn + dlcore.optim.AdamW) vs torch.nn +
  torch.optim.AdamW(fused=True) (torch's fastest CPU AdamW).
* ``mlp``: 64->256->256->10 with ReLU, batch 128, cross-entropy, AdamW; dlcore vs torch eager.
* ``lm-patch``: the torch transformer under ``dlcore.torch.patch(model)`` with ``dlcore.torch.AdamW``, vs the
  same torch model with torch.optim.AdamW(fused=True).

Before timing, each dlcore side gets torch's initial weights and the first-step losses are compared.

FLOPs per step (stated so the table has a rate; 2 per multiply-add, backward = 2x forward for GEMMs):
  LM: per layer, tokens T = B*S = 4096: QKV 2*T*d*3d, out-proj 2*T*d*d, MLP 2*2*T*d*4d -> 24*T*d^2;
  causal attention QK^T and PV: 2*2*B*S*S*d/2 (half the scores) = 2*B*S^2*d; head 2*T*d*V.
  Forward total F = 4*(24*T*d^2 + 2*B*S^2*d) + 2*T*d*V; step = 3*F (optimizer and elementwise ops not counted).
  MLP: F = 2*128*(64*256 + 256*256 + 256*10); step = 3*F.

    python -m bench.bench_train_step      # interleaved ratios (A, B, A, B, ...), medians, load average
"""
from __future__ import annotations

import itertools
import os
import time

import numpy as np
import pytest

V, D, H, S, B, NL = 256, 256, 4, 256, 16, 4
MLP_SIZES, MLP_BATCH = (64, 256, 256, 10), 128
LR = 1e-3


def lm_flops():
    t = B * S
    fwd = NL * (24 * t * D * D + 2 * B * S * S * D) + 2 * t * D * V
    return 3 * fwd


def mlp_flops():
    fwd = 2 * MLP_BATCH * sum(a * b for a, b in itertools.pairwise(MLP_SIZES))
    return 3 * fwd


def _batches(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, V, (B, S + 1)) for _ in range(n)]


def _mlp_batches(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((MLP_BATCH, MLP_SIZES[0])).astype(np.float32),
             rng.integers(0, MLP_SIZES[-1], MLP_BATCH)) for _ in range(n)]


# ------------------------------------------------------------------------------------------------- torch
def torch_lm(seed=0):
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(V, D)
            self.pos = nn.Embedding(S, D)
            for i in range(NL):
                setattr(self, f"h{i}", nn.TransformerEncoderLayer(D, H, 4 * D, dropout=0.0, activation="gelu",
                                                                  batch_first=True, norm_first=True))
            self.ln_f = nn.LayerNorm(D)
            self.head = nn.Linear(D, V)
            self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(S), persistent=False)
            self.register_buffer("positions", torch.arange(S), persistent=False)

        def forward(self, idx):
            x = self.tok(idx) + self.pos(self.positions)
            for i in range(NL):
                x = getattr(self, f"h{i}")(x, src_mask=self.mask, is_causal=True)
            return self.head(self.ln_f(x))

    return LM()


def torch_mlp(seed=0):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(itertools.pairwise(MLP_SIZES)):
        layers.append(nn.Linear(a, b))
        if i < len(MLP_SIZES) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def torch_adamw(params, fused=None):
    import torch

    if fused is None:
        fused = os.environ.get("DLCORE_BENCH_TORCH_ADAMW", "fused") == "fused"
    try:
        return torch.optim.AdamW(params, lr=LR, fused=True) if fused else torch.optim.AdamW(params, lr=LR,
                                                                                             foreach=True)
    except (RuntimeError, ValueError):  # fused unsupported here: the multi-tensor (foreach) version
        return torch.optim.AdamW(params, lr=LR, foreach=True)


def torch_step(model, opt, flat_out):
    """A step function for a torch model; ``flat_out`` reshapes (B, S, V) logits to (B*S, V)."""
    import torch
    import torch.nn.functional as F

    def step(x, y):
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        out = model(x)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]) if flat_out else out, y.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


# ------------------------------------------------------------------------------------------------ dlcore
def dlcore_lm():
    from dlcore import nn

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(V, D)
            self.pos = nn.Embedding(S, D)
            for i in range(NL):
                setattr(self, f"h{i}", nn.TransformerEncoderLayer(D, H, 4 * D, dropout=0.0, activation="gelu",
                                                                  batch_first=True, norm_first=True))
            self.ln_f = nn.LayerNorm(D)
            self.head = nn.Linear(D, V)
            self.positions = np.arange(S)

        def forward(self, idx):
            x = self.tok(idx) + self.pos(self.positions)
            for i in range(NL):
                x = getattr(self, f"h{i}")(x, is_causal=True)
            return self.head(self.ln_f(x))

    return LM()


def dlcore_mlp():
    from dlcore import nn

    layers = []
    for i, (a, b) in enumerate(itertools.pairwise(MLP_SIZES)):
        layers.append(nn.Linear(a, b))
        if i < len(MLP_SIZES) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def copy_weights(dl_model, torch_model):
    """Copy torch's weights into the dlcore model (the parameter names match one to one)."""
    sd = {k: v.detach().numpy().copy() for k, v in torch_model.state_dict().items()}
    dl_model.load_state_dict(sd)


def dlcore_step(model, opt, flat_out):
    from dlcore import ops

    def step(x, y):
        out = model(x)
        loss = ops.cross_entropy(out.reshape(-1, out.shape[-1]) if flat_out else out, y.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
        return float(loss.item())

    return step


# ------------------------------------------------------------------------------------------------ cases
def make_case(case, impl):
    """(step(x, y) -> loss, batches) for ``case`` in {'lm', 'mlp', 'lm-patch'} and ``impl`` in
    {'dlcore', 'torch'}; the dlcore side starts from the torch side's initial weights (seed 0)."""
    import dlcore

    if case == "mlp":
        tm = torch_mlp()
        data = _mlp_batches(4)
        if impl == "torch":
            return torch_step(tm, torch_adamw(tm.parameters()), False), data
        dm = dlcore_mlp()
        copy_weights(dm, tm)
        return dlcore_step(dm, dlcore.optim.AdamW(dm.parameters(), lr=LR), False), \
            data
    data = [(b[:, :-1].copy(), b[:, 1:].copy()) for b in _batches(4)]
    tm = torch_lm()
    if impl == "torch":
        return torch_step(tm, torch_adamw(tm.parameters()), True), data
    if case == "lm-patch":
        import dlcore.torch

        dlcore.torch.patch(tm)
        return torch_step(tm, dlcore.torch.AdamW(tm.parameters(), lr=LR), True), data
    dm = dlcore_lm()
    copy_weights(dm, tm)
    return dlcore_step(dm, dlcore.optim.AdamW(dm.parameters(), lr=LR), True), data


def check_same_loss(case, tol=1e-4):
    """First-step losses of both sides agree (same weights, same batch)."""
    (fa, da), (fb, db) = make_case(case, "dlcore"), make_case(case, "torch")
    la, lb = fa(*da[0]), fb(*db[0])
    assert abs(la - lb) <= tol * max(1.0, abs(lb)), f"{case}: first-step loss dlcore {la} vs torch {lb}"
    la2, lb2 = fa(*da[1]), fb(*db[1])  # after one optimizer step both sides still agree closely
    assert abs(la2 - lb2) <= 10 * tol * max(1.0, abs(lb2)), f"{case}: second-step loss dlcore {la2} vs torch {lb2}"
    return la, lb


FLOPS = {"lm": lm_flops, "lm-patch": lm_flops, "mlp": mlp_flops}
SHAPES = {"lm": (B, S, D, V), "lm-patch": (B, S, D, V), "mlp": (MLP_BATCH,) + MLP_SIZES}
OPS = {"lm": "train step transformer LM", "lm-patch": "train step transformer LM (torch.patch)",
       "mlp": "train step MLP"}


@pytest.mark.parametrize("impl", ["dlcore", "torch"])
@pytest.mark.parametrize("case", ["lm", "mlp", "lm-patch"])
def bench_train_step(run_case, case, impl):
    if impl == "dlcore":
        check_same_loss(case)
    def stepper(impl_):
        step, data = make_case(case, impl_)
        it = iter(range(1 << 30))

        def fn():
            x, y = data[next(it) % len(data)]
            return step(x, y)

        return fn

    backend = "torch" if impl == "torch" else ("dlcore.torch" if case == "lm-patch" else "numba")
    run_case(stepper(impl), op=OPS[case], shape=SHAPES[case], dtype=np.float32, backend=backend,
             flops=FLOPS[case](), rounds=7 if case != "mlp" else 50,
             paired={"torch": stepper("torch")} if impl == "dlcore" else None)


# ------------------------------------------------------------------------------------------------ script
def interleaved(case, reps=9, inner=None):
    """Median ms per step of dlcore and torch, timed alternately in this process, each turn after an idle gap."""
    from bench.conftest import _IDLE_GAP_S

    inner = inner or (1 if case != "mlp" else 50)
    sides = {impl: make_case(case, impl) for impl in ("dlcore", "torch")}
    times = {impl: [] for impl in sides}
    for impl, (step, data) in sides.items():  # warm-up: compile, allocate state
        for i in range(2):
            step(*data[i])
    for r in range(reps):
        for impl, (step, data) in sides.items():
            time.sleep(_IDLE_GAP_S)  # the other side's BLAS workers spin down first (bench/conftest.py)
            t0 = time.perf_counter()
            for i in range(inner):
                step(*data[(r + i) % len(data)])
            times[impl].append((time.perf_counter() - t0) / inner * 1e3)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return med["dlcore"], med["torch"]


def main():
    import argparse

    import torch

    import dlcore

    ap = argparse.ArgumentParser()
    ap.add_argument("cases", nargs="*", default=["lm", "mlp", "lm-patch"])
    ap.add_argument("--reps", type=int, default=9)
    args = ap.parse_args()
    torch.set_num_threads(dlcore.get_num_threads())
    print(f"threads {dlcore.get_num_threads()}, torch {torch.__version__}")
    for case in args.cases:
        la, lb = check_same_loss(case)
        print(f"{case}: first-step loss dlcore {la:.6f} torch {lb:.6f}")
        d, t = interleaved(case, args.reps)
        print(f"{case}: dlcore {d:.2f} ms  torch {t:.2f} ms  torch/dlcore {t / d:.2f}x  "
              f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
