"""Quality bars of the sequence models with their DEFAULT hyperparameters (fixed seeds, held-out data), each
against a simple baseline. Slow (minutes): run with ``pytest -m slow -s`` to see the figures.

* LanguageModel on ~400 KB of the standard library's own .py files: held-out bits per character at least
  25% below an add-one smoothed character bigram fitted on the same training text.
* Forecaster on statsmodels' yearly sunspots: one-step MAE over the last 60 years below seasonal-naive
  (11-year cycle) and no worse than Ridge on the same lags.
* SequenceClassifier on "is this bracket sequence balanced" (both classes hold equal bracket counts):
  accuracy >= 0.95 while logistic regression on token counts stays near chance.
"""
import glob
import os
import time

import numpy as np
import pytest

from dlcore.tasks import Forecaster, LanguageModel, SequenceClassifier

pytestmark = pytest.mark.slow


# ------------------------------------------------------------------------------------------------ LanguageModel
def stdlib_text(n_chars=400_000):
    """The first ``n_chars`` characters of the standard library's top-level .py files in name order."""
    parts, total = [], 0
    for path in sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py"))):
        with open(path, encoding="utf-8", errors="replace") as fh:
            parts.append(fh.read())
        total += len(parts[-1])
        if total >= n_chars:
            break
    return "".join(parts)[:n_chars]


def bigram_bits_per_char(train, test):
    """Add-one smoothed character bigram: bits per character of ``test`` (every character after the first),
    over the training characters plus one id for characters never seen in training."""
    chars = sorted(set(train))
    index = {c: i for i, c in enumerate(chars)}
    V = len(chars) + 1
    enc = lambda s: np.array([index.get(c, V - 1) for c in s])
    a, b = enc(train), enc(test)
    counts = np.ones((V, V))
    np.add.at(counts, (a[:-1], a[1:]), 1)
    p = counts / counts.sum(axis=1, keepdims=True)
    return float(-np.log2(p[b[:-1], b[1:]]).mean())


def test_language_model_beats_bigram_by_25_percent():
    text = stdlib_text()
    cut = int(len(text) * 0.9)
    train, test = text[:cut], text[cut:]
    baseline = bigram_bits_per_char(train, test)
    t0 = time.perf_counter()
    lm = LanguageModel(random_state=0).fit(train)
    fit_s = time.perf_counter() - t0
    bpc = lm.bits_per_char(test)
    print(f"\nLanguageModel: held-out {bpc:.3f} bits/char vs add-one bigram {baseline:.3f} "
          f"({1 - bpc / baseline:.1%} lower; bar 25%); fit {fit_s:.0f} s, eval {time.perf_counter() - t0 - fit_s:.0f} s "
          f"on {len(train)} / {len(test)} chars")
    print("  sample:", repr(lm.generate("def ", 80, temperature=0.7, random_state=0)))
    assert bpc <= 0.75 * baseline


# ------------------------------------------------------------------------------------------------ Forecaster
def test_forecaster_beats_seasonal_naive_and_matches_ridge():
    from sklearn.linear_model import Ridge
    from statsmodels.datasets import sunspots

    y = sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(dtype=np.float64)
    n_test, season, n_lags = 60, 11, 12  # the last 60 years, one-step-ahead forecasts from the true past
    train = y[:-n_test]
    idx = np.arange(len(y) - n_test, len(y))
    histories = np.stack([y[i - n_lags:i] for i in idx])
    truth = y[idx]
    naive_mae = np.mean(np.abs(truth - y[idx - season]))
    W = np.lib.stride_tricks.sliding_window_view(train, n_lags + 1)
    ridge_mae = np.mean(np.abs(Ridge().fit(W[:, :-1], W[:, -1]).predict(histories) - truth))
    t0 = time.perf_counter()
    f = Forecaster(n_lags=n_lags, random_state=0).fit(train)
    mae = np.mean(np.abs(f.predict(histories)[:, 0] - truth))
    print(f"\nForecaster: sunspots one-step MAE {mae:.2f} vs seasonal-naive {naive_mae:.2f}, Ridge {ridge_mae:.2f}; "
          f"fit {time.perf_counter() - t0:.1f} s, {f.n_iter_} epochs")
    assert mae < naive_mae
    assert mae <= ridge_mae


# ------------------------------------------------------------------------------------------------ SequenceClassifier
def brackets(n, rng, max_pairs=10):
    """``n`` sequences of '(' = 0 and ')' = 1, half balanced; every sequence holds as many '(' as ')' and the
    lengths are drawn the same way in both classes, so only the order tells them apart."""
    seqs, labels = [], []
    for i in range(n):
        s = rng.permutation(np.repeat([0, 1], int(rng.integers(1, max_pairs + 1))))
        depth = np.cumsum(np.where(s == 0, 1, -1))
        balanced = i % 2 == 0
        if balanced:  # rotate to just after the deepest point: every prefix is then >= 0 (cycle lemma)
            k = int(np.argmin(depth)) + 1
            s = np.concatenate([s[k:], s[:k]])
        elif depth.min() >= 0:  # balanced by chance: swap the first '(' with the last ')'
            s = s.copy()
            s[0], s[-1] = 1, 0
        seqs.append(s.tolist())
        labels.append(int(balanced))
    order = rng.permutation(n)
    return [seqs[i] for i in order], np.array(labels)[order]


def test_sequence_classifier_needs_order_and_gets_it():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    seqs, y = brackets(4000, rng)
    train_s, train_y, test_s, test_y = seqs[:3000], y[:3000], seqs[3000:], y[3000:]
    counts = lambda ss: np.array([[s.count(0), s.count(1)] for s in ss])
    bag = LogisticRegression().fit(counts(train_s), train_y).score(counts(test_s), test_y)
    t0 = time.perf_counter()
    clf = SequenceClassifier(random_state=0).fit(train_s, train_y)
    acc = clf.score(test_s, test_y)
    print(f"\nSequenceClassifier: balanced-brackets accuracy {acc:.3f} vs bag-of-tokens {bag:.3f}; "
          f"fit {time.perf_counter() - t0:.0f} s, {clf.n_iter_} epochs")
    assert acc >= 0.95
    assert bag <= 0.6
