"""Fast tests of dlcore.tasks.LanguageModel, Forecaster and SequenceClassifier: API conventions, bad inputs and
small correctness checks on tiny data and tiny networks (quality runs are in test_sequence_quality.py)."""
import math

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from dlcore.tasks import Forecaster, LanguageModel, SequenceClassifier
from dlcore.train import History

# tiny, quick settings: every fit below takes about a second or less
LM_FAST = {"context_length": 16, "d_model": 16, "n_heads": 2, "n_layers": 1, "batch_size": 8, "max_steps": 30,
           "warmup_steps": 5, "eval_interval": 10, "learning_rate": 1e-2}
FC_FAST = {"n_lags": 6, "hidden_layer_sizes": (16,), "max_epochs": 40, "patience": 10, "learning_rate": 1e-2}
SC_FAST = {"d_model": 16, "n_heads": 2, "n_layers": 1, "max_epochs": 8, "batch_size": 32, "learning_rate": 5e-3,
           "patience": 4}

TEXT = ("def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n\n\n"
        "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n") * 12


@pytest.fixture(scope="module")
def lm():
    return LanguageModel(random_state=0, **LM_FAST).fit(TEXT)


# ------------------------------------------------------------------------------------------------ LanguageModel
def test_lm_fit_learns_and_keeps_history(lm):
    assert isinstance(lm.history_, History)
    h = lm.history_.history
    assert set(h) == {"loss", "bpc", "val_loss", "val_bpc"} and len(lm.history_.epoch) == 3
    assert h["val_bpc"][-1] < h["val_bpc"][0]
    assert lm.n_iter_ == 30
    assert lm.vocabulary_[0] == "<unk>" and len(set(lm.vocabulary_)) == len(lm.vocabulary_)
    unigram_bits = -np.sum(lm.unigram_[lm.unigram_ > 0] * np.log2(lm.unigram_[lm.unigram_ > 0]))
    assert lm.bits_per_char(TEXT[:300]) < unigram_bits  # better than character frequencies alone


def test_lm_bits_per_char_matches_a_naive_loop(lm):
    """stride=1 scores each character from exactly the context_length characters before it."""
    from dlcore.autograd import no_grad
    from dlcore.tasks.sequence import _threads

    text = TEXT[5:60]
    ids = lm._encode(text)
    T, bits = lm.context_length, 0.0
    with no_grad(), _threads(None):
        for i in range(1, len(ids)):
            ctx = ids[max(0, i - T):i][None]
            z = lm.model_(ctx).numpy()[0, -1].astype(np.float64)
            bits -= (z[ids[i]] - z.max() - np.log(np.exp(z - z.max()).sum())) / math.log(2)
    naive = bits / (len(ids) - 1)
    assert lm.bits_per_char(text, stride=1) == pytest.approx(naive, rel=1e-4)
    # a larger stride gives some predictions less context: close, not equal
    assert lm.bits_per_char(text) == pytest.approx(naive, rel=0.2)
    # a text shorter than the context is one window, whatever the stride
    assert lm.bits_per_char(text[:10], stride=3) == pytest.approx(lm.bits_per_char(text[:10], stride=1), rel=1e-5)


def test_lm_unknown_characters_map_to_unk(lm):
    assert "€" not in lm.vocabulary_
    np.testing.assert_array_equal(lm._encode("€é"), [0, 0])
    assert math.isfinite(lm.bits_per_char("x = '€uro'\n"))
    rare = LanguageModel(random_state=0, min_char_count=300, **{**LM_FAST, "max_steps": 2}).fit(TEXT)
    assert rare.vocabulary_ == ["<unk>", " "]  # only the space is that frequent


def test_lm_generate(lm):
    out = lm.generate("def ", 25, temperature=0.8, random_state=1)
    assert isinstance(out, str) and len(out) == 25 and set(out) <= set(lm.vocabulary_[1:])
    assert lm.generate("def ", 25, temperature=0.8, random_state=1) == out
    assert lm.generate("def ", 25, temperature=0.0) == lm.generate("def ", 25, temperature=0.0, random_state=5)
    assert len(lm.generate("", 5, random_state=0)) == 5  # empty prompt: first char from the unigram
    assert lm.generate("€", 3, random_state=0) and lm.generate("x", 0) == ""
    long_prompt = TEXT[:100]  # longer than context_length: cropped
    assert len(lm.generate(long_prompt, 4, random_state=0)) == 4


def test_lm_reproducible_and_global_seed_untouched():
    from dlcore.nn import init, manual_seed

    manual_seed(7)
    expected = init.generator().random()
    manual_seed(7)
    kw = {**LM_FAST, "max_steps": 6, "eval_interval": 3}
    a = LanguageModel(random_state=3, **kw).fit(TEXT[:600]).bits_per_char(TEXT[:80])
    assert init.generator().random() == expected
    b = LanguageModel(random_state=3, **kw).fit(TEXT[:600]).bits_per_char(TEXT[:80])
    c = LanguageModel(random_state=4, **kw).fit(TEXT[:600]).bits_per_char(TEXT[:80])
    assert a == b and a != c


def test_lm_params_clone_and_short_texts():
    lm = LanguageModel(d_model=32, random_state=1)
    assert lm.get_params()["d_model"] == 32 and lm.get_params()["verbose"] is False
    assert clone(lm.set_params(max_steps=5)).max_steps == 5
    # a text shorter than the context trains on shorter windows; too short to split: no validation
    tiny = LanguageModel(random_state=0, **{**LM_FAST, "max_steps": 4, "eval_interval": 2}).fit("abcabcab")
    assert "val_loss" not in tiny.history_.history and math.isfinite(tiny.bits_per_char("abcab"))
    no_val = LanguageModel(random_state=0, validation_fraction=0.0, **{**LM_FAST, "max_steps": 3}).fit(TEXT[:200])
    assert set(no_val.history_.history) == {"loss", "bpc"}


@pytest.mark.parametrize("text, err", [("", ValueError), ("a", ValueError), (b"bytes", TypeError),
                                       (123, TypeError), (["a", "b"], TypeError)])
def test_lm_fit_rejects_bad_text(text, err):
    with pytest.raises(err):
        LanguageModel(**LM_FAST).fit(text)


@pytest.mark.parametrize("params", [{"d_model": 30, "n_heads": 4}, {"context_length": 0}, {"max_steps": 0},
                                    {"learning_rate": 0.0}, {"dropout": 1.0}, {"activation": "tanh"},
                                    {"validation_fraction": 1.0}, {"batch_size": 2.5}, {"n_jobs": 0},
                                    {"min_char_count": 0}])
def test_lm_rejects_bad_params(params):
    with pytest.raises(ValueError):
        LanguageModel(**{**LM_FAST, **params}).fit(TEXT[:200])


def test_lm_rejects_bad_calls(lm):
    with pytest.raises(NotFittedError):
        LanguageModel().bits_per_char("abc")
    with pytest.raises(NotFittedError):
        LanguageModel().generate("abc", 3)
    with pytest.raises(ValueError, match="at least 2"):
        lm.bits_per_char("a")
    with pytest.raises(TypeError):
        lm.bits_per_char(None)
    with pytest.raises(ValueError):
        lm.bits_per_char(TEXT[:50], stride=0)
    with pytest.raises(ValueError):
        lm.generate("a", -1)
    with pytest.raises(ValueError):
        lm.generate("a", 3, temperature=-0.5)
    with pytest.raises(ValueError):
        lm.generate("a", 3, temperature=float("nan"))
    with pytest.raises(TypeError):
        lm.generate(5, 3)


# ------------------------------------------------------------------------------------------------ Forecaster
@pytest.fixture(scope="module")
def wave():
    t = np.arange(240)
    return 10.0 + 3.0 * np.sin(2 * np.pi * t / 12) + 0.1 * np.random.default_rng(0).standard_normal(240)


def test_forecaster_predicts_a_periodic_series(wave):
    f = Forecaster(random_state=0, horizon=3, **FC_FAST).fit(wave[:200])
    assert isinstance(f.history_, History) and "val_loss" in f.history_.history
    assert f.n_iter_ == len(f.history_.epoch) >= 1
    pred = f.predict(wave[:200])
    assert pred.shape == (3,)
    assert np.mean(np.abs(pred - wave[200:203])) < 0.6  # a tenth of the swing
    # several histories at once, and only the last n_lags values matter
    H = np.stack([wave[i - 10:i] for i in range(200, 230)])
    batch = f.predict(H)
    assert batch.shape == (30, 3)
    np.testing.assert_allclose(batch[0], pred, rtol=1e-6)
    np.testing.assert_allclose(f.predict(list(wave[194:200])), pred, rtol=1e-6)
    assert np.mean(np.abs(batch[:, 0] - wave[200:230])) < 0.6


def test_forecaster_reproducible_params_and_constant_series(wave):
    a = Forecaster(random_state=2, **FC_FAST).fit(wave).predict(wave)
    b = Forecaster(random_state=2, **FC_FAST).fit(wave).predict(wave)
    np.testing.assert_array_equal(a, b)
    f = Forecaster(n_lags=4, horizon=2, random_state=0)
    assert f.get_params()["n_lags"] == 4 and clone(f).horizon == 2
    const = Forecaster(random_state=0, **{**FC_FAST, "max_epochs": 5}).fit(np.full(50, 7.0))
    np.testing.assert_allclose(const.predict(np.full(10, 7.0)), [7.0], atol=0.5)
    # a series too short to hold out a validation tail trains on all of it
    short = Forecaster(random_state=0, **{**FC_FAST, "max_epochs": 3}).fit(wave[:15])
    assert "val_loss" not in short.history_.history
    # pandas Series and (n, 1) columns are accepted
    import pandas as pd

    Forecaster(random_state=0, **{**FC_FAST, "max_epochs": 2}).fit(pd.Series(wave[:60]))
    Forecaster(random_state=0, **{**FC_FAST, "max_epochs": 2}).fit(wave[:60, None])


def test_forecaster_rejects_bad_series(wave):
    with pytest.raises(ValueError, match="n_lags"):
        Forecaster(n_lags=50).fit(wave[:40])  # n_lags longer than the series
    with pytest.raises(ValueError, match="at least"):
        Forecaster(n_lags=6, horizon=3).fit(wave[:9])
    bad = wave.copy()
    bad[17] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        Forecaster(**FC_FAST).fit(bad)
    bad[17] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        Forecaster(**FC_FAST).fit(bad)
    with pytest.raises(ValueError, match="1-D"):
        Forecaster(**FC_FAST).fit(np.ones((30, 2)))
    with pytest.raises(ValueError):
        Forecaster(**FC_FAST).fit(["a", "b"] * 20)
    with pytest.raises(ValueError):
        Forecaster(**FC_FAST).fit([])


@pytest.mark.parametrize("params", [{"n_lags": 0}, {"horizon": 0}, {"n_lags": 2.5}, {"max_epochs": 0},
                                    {"validation_fraction": 0.0}, {"hidden_layer_sizes": (0,)},
                                    {"activation": "swish"}, {"learning_rate": -1.0}, {"n_jobs": 0}])
def test_forecaster_rejects_bad_params(params, wave):
    with pytest.raises(ValueError):
        Forecaster(**{**FC_FAST, **params}).fit(wave)


def test_forecaster_rejects_bad_history(wave):
    f = Forecaster(random_state=0, **{**FC_FAST, "max_epochs": 2}).fit(wave)
    with pytest.raises(ValueError, match="n_lags"):
        f.predict(wave[:5])
    h = wave[:30].copy()
    h[-1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        f.predict(h)
    h[0] = np.nan  # outside the last n_lags: ignored
    h[-1] = 1.0
    assert np.isfinite(f.predict(h)).all()
    with pytest.raises(ValueError):
        f.predict(np.ones((2, 2, 8)))
    with pytest.raises(NotFittedError):
        Forecaster().predict(wave)


def test_forecaster_linear_only(wave):
    f = Forecaster(random_state=0, hidden_layer_sizes=(), n_lags=6, max_epochs=60, learning_rate=1e-2).fit(wave)
    assert f.predict(wave).shape == (1,)


# ------------------------------------------------------------------------------------------------ SequenceClassifier
def _first_equals_last(n, rng):
    seqs = [rng.integers(0, 3, rng.integers(2, 9)).tolist() for _ in range(n)]
    return seqs, np.array([int(s[0] == s[-1]) for s in seqs])


@pytest.fixture(scope="module")
def seq_data():
    return _first_equals_last(240, np.random.default_rng(0))


@pytest.fixture(scope="module")
def sc(seq_data):
    seqs, y = seq_data
    return SequenceClassifier(random_state=0, **SC_FAST).fit(seqs, np.where(y == 1, "same", "diff"))


def test_sequence_classifier_fit_predict(sc, seq_data):
    seqs, y = seq_data
    assert list(sc.classes_) == ["diff", "same"]
    assert isinstance(sc.history_, History) and "val_loss" in sc.history_.history
    assert sc.n_iter_ == len(sc.history_.epoch) and sc.vocab_size_ == 3 and sc.max_len_ == 8
    proba = sc.predict_proba(seqs[:20])
    assert proba.shape == (20, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    pred = sc.predict(seqs[:20])
    assert pred.dtype.kind == "U" and set(pred) <= {"diff", "same"}
    assert sc.decision_function(seqs[:3]).shape == (3, 2)
    assert 0.0 <= sc.score(seqs, np.where(y == 1, "same", "diff")) <= 1.0


def test_padding_does_not_change_predictions(sc):
    """A sequence's prediction is the same alone and batched beside longer ones (padding is masked)."""
    s = [1, 0, 2]
    alone = sc.predict_proba([s])
    together = sc.predict_proba([[2, 2, 1, 0, 1, 2, 0, 1], s, [0]])
    np.testing.assert_allclose(together[1], alone[0], rtol=1e-5, atol=1e-6)
    # a 2-D int array is accepted (every row a full-length sequence), and an empty sequence too
    assert sc.predict(np.array([[0, 1, 2], [2, 1, 0]])).shape == (2,)
    assert sc.predict([[]]).shape == (1,)


def test_sequence_classifier_learns_an_order_task():
    seqs, y = _first_equals_last(600, np.random.default_rng(1))
    clf = SequenceClassifier(random_state=0, **{**SC_FAST, "max_epochs": 15}).fit(seqs[:500], y[:500])
    assert clf.score(seqs[500:], y[500:]) >= 0.8


def test_sequence_classifier_reproducible_and_params(seq_data):
    seqs, y = seq_data
    kw = {**SC_FAST, "max_epochs": 2}
    a = SequenceClassifier(random_state=5, **kw).fit(seqs, y).predict_proba(seqs[:10])
    b = SequenceClassifier(random_state=5, **kw).fit(seqs, y).predict_proba(seqs[:10])
    np.testing.assert_array_equal(a, b)
    clf = SequenceClassifier(vocab_size=10, max_len=20, dropout=0.1, early_stopping=False, random_state=0, **kw)
    assert clone(clf).get_params()["vocab_size"] == 10
    clf.fit(seqs, y)
    assert clf.vocab_size_ == 10 and clf.max_len_ == 20 and "val_loss" not in clf.history_.history
    assert clf.predict([[9] * 20]).shape == (1,)


def test_sequence_classifier_rejects_bad_inputs(sc, seq_data):
    seqs, y = seq_data
    with pytest.raises(ValueError, match="outside the vocabulary"):
        sc.predict([[0, 1, 3]])  # token 3 never seen in fit
    with pytest.raises(ValueError, match="negative"):
        sc.predict([[0, -1]])
    with pytest.raises(ValueError, match="max_len"):
        sc.predict([[0] * 9])
    with pytest.raises(ValueError, match="non-integer"):
        sc.predict([[0.5, 1.0]])
    with pytest.raises(TypeError, match="string"):
        sc.predict("0 1 2")
    with pytest.raises(TypeError):
        sc.predict(5)
    with pytest.raises(ValueError, match="empty"):
        sc.predict([])
    with pytest.raises(ValueError, match="labels"):
        SequenceClassifier(**SC_FAST).fit(seqs, y[:-1])
    with pytest.raises(ValueError, match="one class"):
        SequenceClassifier(**SC_FAST).fit(seqs, np.zeros(len(seqs)))
    with pytest.raises(ValueError):
        SequenceClassifier(**SC_FAST).fit(seqs, np.linspace(0, 1, len(seqs)))  # continuous targets
    with pytest.raises(ValueError, match="vocab_size"):
        SequenceClassifier(vocab_size=2, **SC_FAST).fit(seqs, y)
    with pytest.raises(ValueError, match="max_len"):
        SequenceClassifier(max_len=3, **SC_FAST).fit(seqs, y)
    with pytest.raises(ValueError):
        SequenceClassifier(**SC_FAST).fit([[[0, 1]], [[1, 0]]], [0, 1])
    with pytest.raises(ValueError, match="divisible"):
        SequenceClassifier(**{**SC_FAST, "d_model": 15}).fit(seqs, y)
    with pytest.raises(NotFittedError):
        SequenceClassifier().predict(seqs)
