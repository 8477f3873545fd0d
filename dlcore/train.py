"""A thin training loop: `Trainer(model, loss, optimizer, metrics=...).fit(X, y, ...)` returns a `History`.

Per epoch: shuffled mini-batches through forward, loss, backward and the optimizer step, with a tqdm
progress bar showing the running loss and metrics (quiet when ``verbose=False`` or stderr is not a
terminal); then validation, early stopping on the monitored quantity (restoring the best weights), and
best-checkpoint saving with `dlcore.save`. `History.plot(path)` draws the learning curves to a PNG.
"""
from __future__ import annotations

import math
import sys
import time

import numpy as np

from dlcore import _arrays, io, metrics as metrics_mod, ops
from dlcore.autograd import Tensor, no_grad
from dlcore.nn.utils import clip_grad_norm_

LOSSES = {
    "cross_entropy": lambda pred, y: ops.cross_entropy(pred, y),
    "mse": lambda pred, y: ops.mse_loss(pred, y),
    "bce": lambda pred, y: ops.binary_cross_entropy_with_logits(pred, y),
}


class History:
    """Per-epoch values: ``history.history['loss']``, ``['val_loss']``, ``['accuracy']``... and run times."""

    def __init__(self):
        self.history: dict = {}
        self.epoch: list = []
        self.best_epoch = None
        self.stopped_early = False
        self.seconds = 0.0

    def append(self, epoch, values):
        self.epoch.append(epoch)
        for k, v in values.items():
            self.history.setdefault(k, []).append(float(v))

    def __getitem__(self, key):
        return self.history[key]

    def __repr__(self):
        last = ", ".join(f"{k}={v[-1]:.4g}" for k, v in self.history.items())
        return f"History({len(self.epoch)} epochs: {last})"

    def plot(self, path, title=None):
        """Write the learning curves (loss panel, metrics panel) to a PNG file."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = [k for k in self.history if not k.startswith("val_")]
        losses = [k for k in names if k == "loss" or k.endswith("loss")]
        others = [k for k in names if k not in losses]
        fig, axes = plt.subplots(1, 2 if others else 1, figsize=(11 if others else 6, 4), squeeze=False)
        epochs = np.array(self.epoch) + 1
        for ax, keys in zip(axes[0], [losses, others]):
            for k in keys:
                ax.plot(epochs, self.history[k], label=k, marker=".")
                if "val_" + k in self.history:
                    ax.plot(epochs, self.history["val_" + k], label="val_" + k, marker=".", ls="--")
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.legend()
        axes[0][0].set_ylabel("loss")
        if self.best_epoch is not None:
            axes[0][0].axvline(self.best_epoch + 1, color="gray", ls=":", lw=1)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def _host(a):
    a = a.data if isinstance(a, Tensor) else a
    return _arrays.from_native(_arrays.to_native(a, "numpy"), "numpy")


def _take(a, idx):
    if _arrays.is_torch(a):
        import torch

        return a[torch.as_tensor(idx)]
    return a[idx]


class Trainer:
    """Fit a `dlcore.nn.Module` with a loss and an optimizer.

    Args:
        model: a Module mapping a batch (Tensor) to predictions (Tensor).
        loss: 'cross_entropy' (integer targets), 'mse', 'bce' (multi-label 0/1 targets, logits out), or a
            callable ``loss(pred: Tensor, target) -> scalar Tensor``.
        optimizer: a `dlcore.optim` optimizer over ``model.parameters()``.
        metrics: names ('accuracy', 'f1', 'r2', 'mae') or callables ``(y_true, y_pred) -> float``, computed on
            the model's raw outputs for every epoch (and on validation data).
        scheduler: optional lr schedule, stepped once per epoch.
        early_stopping: stop after this many epochs without improvement of ``monitor`` (None: never).
        monitor: what early stopping and checkpointing watch: 'val_loss' when validation data is given,
            else 'loss'; or a metric name such as 'val_accuracy'.
        checkpoint: path for the best model's weights (`dlcore.save`), rewritten on each improvement.
        clip_grad_norm: clip the global gradient norm to this before each step.
        verbose: progress bars (only when stderr is a terminal, too).
        seed: seed for batch shuffling.
    """

    def __init__(self, model, loss, optimizer, metrics=(), scheduler=None, early_stopping=None, monitor=None,
                 checkpoint=None, clip_grad_norm=None, verbose=True, seed=None):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        if isinstance(loss, str):
            if loss not in LOSSES:
                raise ValueError(f"unknown loss {loss!r}; use one of {list(LOSSES)} or a callable")
            self.loss_name, self.loss_fn = loss, LOSSES[loss]
        elif callable(loss):
            self.loss_name, self.loss_fn = getattr(loss, "__name__", "loss"), loss
        else:
            raise TypeError("loss must be a name or a callable(pred, target)")
        self.metrics = [metrics_mod.get(m) for m in ((metrics,) if isinstance(metrics, str) else metrics)]
        self.early_stopping, self.monitor, self.checkpoint = early_stopping, monitor, checkpoint
        self.clip_grad_norm, self.verbose = clip_grad_norm, verbose
        self.rng = np.random.default_rng(seed)

    # -------------------------------------------------------------------------------------------------
    def _bar(self, total, desc):
        if not self.verbose or not sys.stderr.isatty():
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, leave=False, unit="batch", dynamic_ncols=True)

    def _check_xy(self, X, y, what="X"):
        n = len(X)
        if y is not None and len(y) != n:
            raise ValueError(f"{what} has {n} samples but its targets have {len(y)}")
        if n == 0:
            raise ValueError(f"{what} is empty")
        return n

    def fit(self, X, y, epochs=1, batch_size=32, validation_data=None, shuffle=True):
        """Train for ``epochs`` passes over (X, y); returns a `History`."""
        n = self._check_xy(X, y)
        if validation_data is not None:
            self._check_xy(*validation_data, what="validation X")
        monitor = self.monitor or ("val_loss" if validation_data is not None else "loss")
        smaller = monitor.removeprefix("val_") in metrics_mod.SMALLER_IS_BETTER
        best, best_state, waited = math.inf if smaller else -math.inf, None, 0
        history, start = History(), time.perf_counter()
        steps = max(1, math.ceil(n / batch_size))
        for epoch in range(epochs):
            self.model.train()
            order = self.rng.permutation(n) if shuffle else np.arange(n)
            bar = self._bar(steps, f"epoch {epoch + 1}/{epochs}")
            total, seen = 0.0, 0
            for s in range(steps):
                idx = order[s * batch_size:(s + 1) * batch_size]
                xb, yb = _take(X, idx), _take(y, idx)
                self.optimizer.zero_grad()
                loss = self.loss_fn(self.model(Tensor(xb)), yb)
                loss.backward()
                if self.clip_grad_norm:
                    clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
                self.optimizer.step()
                value = float(loss.item())
                if not math.isfinite(value):
                    raise FloatingPointError(f"loss became {value} at epoch {epoch + 1}, batch {s + 1}; lower the "
                                             "learning rate or check the inputs for NaN/inf")
                total += value * len(idx)
                seen += len(idx)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{total / seen:.4f}")
            if bar is not None:
                bar.close()
            values = {"loss": total / seen}
            if self.metrics:
                values.update(self._metrics(X, y, batch_size))
            if validation_data is not None:
                values.update({f"val_{k}": v for k, v in self.evaluate(*validation_data, batch_size=batch_size).items()})
            if self.scheduler is not None:
                self.scheduler.step()
            history.append(epoch, values)
            if self.verbose:
                print(f"epoch {epoch + 1}/{epochs}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()),
                      file=sys.stderr)
            if monitor not in values:
                raise ValueError(f"monitor {monitor!r} is not among the logged values {list(values)}")
            current = values[monitor]
            if (current < best) if smaller else (current > best):
                best, waited, history.best_epoch = current, 0, epoch
                best_state = {k: (v.copy() if hasattr(v, "copy") else v.clone()) for k, v in
                              self.model.state_dict().items()} if self.early_stopping else None
                if self.checkpoint:
                    io.save(self.model.state_dict(), self.checkpoint)
            else:
                waited += 1
                if self.early_stopping is not None and waited >= self.early_stopping:
                    history.stopped_early = True
                    break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        history.seconds = time.perf_counter() - start
        return history

    def predict(self, X, batch_size=256):
        """Raw model outputs for X as a NumPy array, in eval mode and without a graph."""
        self.model.eval()
        outs = []
        with no_grad():
            for s in range(0, len(X), batch_size):
                outs.append(_host(self.model(Tensor(_take(X, np.arange(s, min(s + batch_size, len(X))))))))
        return np.concatenate(outs) if outs else np.zeros((0,))

    def _metrics(self, X, y, batch_size):
        pred = self.predict(X, batch_size)
        yt = _host(y)
        return {name: fn(yt, pred) for name, fn in self.metrics}

    def evaluate(self, X, y, batch_size=256):
        """{'loss': mean loss, metric: value, ...} on (X, y), in eval mode."""
        self._check_xy(X, y)
        pred = self.predict(X, batch_size)
        kind = _arrays.kind_of(y.data if isinstance(y, Tensor) else y)
        with no_grad():
            loss = float(self.loss_fn(Tensor(_arrays.from_native(pred, kind)), y).item())
        out = {"loss": loss}
        yt = _host(y)
        out.update({name: fn(yt, pred) for name, fn in self.metrics})
        return out
