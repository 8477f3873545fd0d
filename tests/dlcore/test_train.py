"""Trainer: history, metrics, validation, early stopping, checkpoints, plots; overfitting and
loss-goes-down checks for each layer kind."""
from __future__ import annotations

import numpy as np
import pytest

import dlcore
from dlcore import Tensor, nn, optim
from dlcore.train import Trainer

rng = np.random.default_rng(0)


def blobs(n=200, d=4, k=3):
    centers = rng.standard_normal((k, d)) * 3
    y = rng.integers(0, k, n)
    return (centers[y] + rng.standard_normal((n, d))).astype(np.float32), y


def test_fit_returns_history_with_metrics_and_validation(tmp_path):
    X, y = blobs()
    dlcore.nn.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3))
    tr = Trainer(model, "cross_entropy", optim.AdamW(model.parameters(), lr=1e-2), metrics=["accuracy", "f1"],
                 verbose=False, seed=0, checkpoint=tmp_path / "best.safetensors")
    h = tr.fit(X[:150], y[:150], epochs=15, batch_size=32, validation_data=(X[150:], y[150:]))
    assert set(h.history) == {"loss", "accuracy", "f1", "val_loss", "val_accuracy", "val_f1"}
    assert h.history["loss"][-1] < h.history["loss"][0]
    assert h.history["val_accuracy"][-1] > 0.9
    assert (tmp_path / "best.safetensors").exists()
    best = dlcore.load(tmp_path / "best.safetensors")
    assert set(best) == set(model.state_dict())
    png = h.plot(tmp_path / "curve.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_early_stopping_restores_best_weights():
    X, y = blobs(60)
    model = nn.Sequential(nn.Linear(4, 3))
    tr = Trainer(model, "cross_entropy", optim.SGD(model.parameters(), lr=5.0), early_stopping=2, verbose=False)
    h = tr.fit(X, y, epochs=50, batch_size=8, validation_data=(X, y))
    assert h.stopped_early or len(h.epoch) == 50
    assert tr.evaluate(X, y)["loss"] == pytest.approx(min(h.history["val_loss"]), rel=1e-5)


def test_bad_inputs():
    model = nn.Linear(4, 1)
    tr = Trainer(model, "mse", optim.SGD(model.parameters(), lr=0.1), verbose=False)
    with pytest.raises(ValueError, match="targets have"):
        tr.fit(np.zeros((5, 4), np.float32), np.zeros((4, 1), np.float32))
    with pytest.raises(ValueError, match="unknown loss"):
        Trainer(model, "hinge", optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(FloatingPointError, match="loss became"):
        Trainer(model, "mse", optim.SGD(model.parameters(), lr=1e30), verbose=False).fit(
            np.full((8, 4), 1e10, np.float32), np.ones((8, 1), np.float32), epochs=3)


LAYER_KINDS = {
    "mlp": lambda: nn.Sequential(nn.Linear(6, 32), nn.GELU(), nn.LayerNorm(32), nn.Linear(32, 4)),
    "silu_dropout": lambda: nn.Sequential(nn.Linear(6, 32), nn.SiLU(), nn.Dropout(0.1, seed=0), nn.Linear(32, 4)),
}


@pytest.mark.parametrize("kind", list(LAYER_KINDS))
def test_overfit_one_batch(kind):
    dlcore.nn.manual_seed(1)
    model = LAYER_KINDS[kind]()
    X, y = rng.standard_normal((16, 6)).astype(np.float32), rng.integers(0, 4, 16)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        loss = dlcore.ops.cross_entropy(model(Tensor(X)), y)
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


class TinyLM(nn.Module):
    def __init__(self, vocab=11, d=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.block = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.0, batch_first=True, norm_first=True)
        self.head = nn.Linear(d, vocab)

    def forward(self, idx):
        h = self.block(self.emb(idx), is_causal=True, src_mask=np.triu(np.ones((idx.shape[1],) * 2, bool), 1))
        return self.head(h)


def test_attention_model_loss_goes_down():
    dlcore.nn.manual_seed(0)
    model = TinyLM()
    seq = np.tile(np.arange(11), 4)[None, :33].repeat(8, 0)  # a periodic sequence: next token is predictable
    x, y = seq[:, :-1], seq[:, 1:]
    opt = optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = dlcore.ops.cross_entropy(model(x).reshape(-1, 11), y.reshape(-1))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
