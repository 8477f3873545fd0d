"""What every task estimator shares: seeds, input scaling, MLP construction and the training loop.

The estimators in `dlcore.tasks` are scikit-learn estimators (``get_params``/``set_params``, ``fit``
returning ``self``, fitted attributes ending in ``_``, validation through `sklearn.utils.validation`) whose
models are `dlcore.nn` modules trained by `dlcore.train.Trainer` on float32 NumPy arrays. This module holds
the parts they have in common so that each estimator file only says what is particular to its task.
"""
from __future__ import annotations

import contextlib
import math
import threading

import numpy as np
from sklearn.utils import check_random_state

from dlcore import nn
from dlcore.nn import init as _init
from dlcore.optim import AdamW
from dlcore.train import Trainer

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


# ------------------------------------------------------------------------------------------------ seeds
def seed_from(random_state) -> int:
    """An int seed from a scikit-learn ``random_state`` (None, an int or a RandomState instance).

    None draws a fresh seed, an int gives the same seed on every fit, and a RandomState instance is advanced
    (so two fits with one instance differ, as in scikit-learn).
    """
    return int(check_random_state(random_state).randint(0, 2**31 - 1))


_init_lock = threading.Lock()


@contextlib.contextmanager
def seeded_init(seed: int):
    """Draw `dlcore.nn` parameter initialisation from ``seed`` inside the block, then put back the
    generator that was there, so fitting an estimator never disturbs the caller's `dlcore.manual_seed`.
    A lock keeps estimators fitted in parallel threads from drawing from each other's generator."""
    with _init_lock:
        saved = _init._rng
        _init.manual_seed(seed)
        try:
            yield
        finally:
            _init._rng = saved


# ------------------------------------------------------------------------------------------------ threads
PARALLEL_WORK = 1 << 18  # rows x widest layer per batch below which training runs on one thread
_controller = None  # threadpoolctl's view of the loaded BLAS/OpenMP libraries, made on first use


@contextlib.contextmanager
def limit_threads(work):
    """Run the block on one thread (BLAS, OpenMP and Numba) when ``work`` (rows times the widest layer of a
    batch) is below `PARALLEL_WORK`.

    Mini-batch training launches a few dozen small kernels per batch; below this size a parallel launch
    costs more than it saves, and on a busy machine every launch waits for threads to be scheduled (a
    64-row batch of a 256-wide MLP measured 20x slower with 2 BLAS and Numba threads than with 1 on a loaded
    2-core box). Larger batches keep every thread. The caller's settings are restored on exit.
    """
    if work >= PARALLEL_WORK:
        yield
        return
    global _controller
    if _controller is None:  # scanning the loaded libraries costs ~10 ms: do it once
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency, but the NumPy backend runs without it
        numba = None
    saved = numba.get_num_threads() if numba is not None else None
    with _controller.limit(limits=1):
        if numba is not None:
            numba.set_num_threads(1)
        try:
            yield
        finally:
            if numba is not None:
                numba.set_num_threads(saved)


def widest(model):
    """The largest dimension of any parameter of ``model`` (its widest layer)."""
    return max((max(p.shape) for p in model.parameters() if p.ndim), default=1)


# ------------------------------------------------------------------------------------------------ scaling
class Standardizer:
    """Per-column ``(x - mean) / scale`` (constant columns get scale 1), computed in float64.

    Args:
        per_feature: one scale per column (StandardScaler); False divides every column by one global scale,
            the root mean variance, which keeps the relative weight of the columns (as PCA sees them).
    """

    def __init__(self, per_feature=True):
        self.per_feature = per_feature

    def fit(self, X):
        X = np.asarray(X, dtype=np.float64)
        self.mean_ = X.mean(axis=0)
        if self.per_feature:
            std = X.std(axis=0)
            self.scale_ = np.where(std > 1e-12 * np.maximum(1.0, np.abs(self.mean_)), std, 1.0)
        else:
            s = float(np.sqrt(X.var(axis=0).mean()))
            self.scale_ = np.full(X.shape[1], s if s > 1e-12 else 1.0)
        return self

    def transform(self, X):
        return ((np.asarray(X, dtype=np.float64) - self.mean_) / self.scale_).astype(np.float32)

    def inverse_transform(self, Z):
        return np.asarray(Z, dtype=np.float64) * self.scale_ + self.mean_


# ------------------------------------------------------------------------------------------------ models
def make_mlp(n_in, hidden, n_out, activation="gelu", dropout=0.0, final_activation=False, seed=None):
    """``Linear -> activation -> Dropout`` per hidden width, then a Linear to ``n_out`` (a Sequential).

    Args:
        n_in: input width.
        hidden: widths of the hidden layers (a tuple; empty for a linear model).
        n_out: output width.
        activation: 'gelu', 'relu', 'silu' or 'tanh'.
        dropout: drop probability after each hidden activation (0 for none).
        final_activation: also put the activation after the last Linear (an encoder's code layer).
        seed: seed of the Dropout layers' own generators (so that training never draws from, or depends on,
            the global `dlcore.manual_seed` generator).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    layers, width = [], n_in
    for i, h in enumerate(hidden):
        layers += [nn.Linear(width, int(h)), ACTIVATIONS[activation]()]
        if dropout:
            layers.append(nn.Dropout(dropout, seed=None if seed is None else seed + 1 + i))
        width = int(h)
    layers.append(nn.Linear(width, n_out))
    if final_activation:
        layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def check_hidden(hidden_layer_sizes):
    """The hidden widths as a tuple of positive ints (an int means one hidden layer)."""
    hidden = (hidden_layer_sizes,) if np.isscalar(hidden_layer_sizes) else tuple(hidden_layer_sizes)
    if any(int(h) != h or h < 1 for h in hidden):
        raise ValueError(f"hidden_layer_sizes must be positive integers, got {hidden_layer_sizes!r}")
    return tuple(int(h) for h in hidden)


def check_training_params(est):
    """Clear errors for out-of-range training hyperparameters (shared names of the neural estimators)."""
    if not (isinstance(est.max_epochs, (int, np.integer)) and est.max_epochs >= 1):
        raise ValueError(f"max_epochs must be a positive int, got {est.max_epochs!r}")
    if not (isinstance(est.batch_size, (int, np.integer)) and est.batch_size >= 1):
        raise ValueError(f"batch_size must be a positive int, got {est.batch_size!r}")
    if not est.learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {est.learning_rate!r}")
    if not est.weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {est.weight_decay!r}")
    if not 0.0 < est.validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {est.validation_fraction!r}")
    if not (isinstance(est.patience, (int, np.integer)) and est.patience >= 1):
        raise ValueError(f"patience must be a positive int, got {est.patience!r}")
    if not 0.0 <= getattr(est, "dropout", 0.0) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {est.dropout!r}")


# ------------------------------------------------------------------------------------------------ training
MIN_VALIDATION_SAMPLES = 20  # below this many samples, early stopping watches the training loss instead


def split_validation(n, fraction, rng, stratify=None):
    """(train indices, validation indices), or (all indices, None) when there are too few samples.

    With ``stratify`` (class labels), every class that has at least two samples puts some in each part.
    """
    n_val = math.ceil(n * fraction)
    if n < MIN_VALIDATION_SAMPLES or n_val < 1 or n - n_val < 1:
        return np.arange(n), None
    if stratify is not None:
        val = []
        for c in np.unique(stratify):
            idx = np.flatnonzero(stratify == c)
            if len(idx) >= 2:
                take = min(len(idx) - 1, max(1, round(len(idx) * fraction)))
                val.append(rng.choice(idx, take, replace=False))
        val = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
        if len(val):
            return np.setdiff1d(np.arange(n), val), val
    perm = rng.permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def train(est, model, loss, X, y, seed, metrics=(), stratify=None):
    """Fit ``model`` on (X, y) with the estimator's training hyperparameters; returns the History.

    AdamW (``learning_rate``, ``weight_decay``) over mini-batches of ``batch_size`` for at most
    ``max_epochs``; with ``early_stopping`` a ``validation_fraction`` split is held out and training stops
    after ``patience`` epochs without a lower validation loss, restoring the best weights (on data too small
    to split, the training loss is watched instead).
    """
    rng = np.random.default_rng(seed)
    tr, val = split_validation(len(X), est.validation_fraction, rng, stratify) if est.early_stopping \
        else (np.arange(len(X)), None)
    optimizer = AdamW(model.parameters(), lr=est.learning_rate, weight_decay=est.weight_decay)
    trainer = Trainer(model, loss, optimizer, metrics=metrics, early_stopping=est.patience if est.early_stopping
                      else None, clip_grad_norm=getattr(est, "clip_grad_norm", None), verbose=bool(est.verbose),
                      seed=seed)
    with limit_threads(est.batch_size * widest(model)):
        if val is None:
            return trainer.fit(X, y, epochs=est.max_epochs, batch_size=est.batch_size)
        return trainer.fit(X[tr], y[tr], epochs=est.max_epochs, batch_size=est.batch_size,
                           validation_data=(X[val], y[val]))


def predict_raw(model, X, batch_size=1024):
    """The model's outputs for float32 X as a NumPy array (eval mode, no graph)."""
    from dlcore.autograd import Tensor, no_grad

    model.eval()
    outs = []
    with no_grad(), limit_threads(min(len(X), batch_size) * widest(model)):
        for s in range(0, len(X), batch_size):
            outs.append(np.asarray(model(Tensor(X[s:s + batch_size])).numpy()))
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def softmax(z):
    z = np.asarray(z, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def sigmoid(z):
    z = np.asarray(z, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))
