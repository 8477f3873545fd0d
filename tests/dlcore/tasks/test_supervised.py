"""Fast tests of dlcore.tasks.Regressor, Classifier and Tagger: API conventions, bad inputs, and
scikit-learn's estimator checks, on tiny data and tiny networks (quality runs are in test_quality.py)."""
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from dlcore.tasks import Classifier, Regressor, Tagger
from dlcore.train import History

# tiny, quick settings: every fit below takes a fraction of a second
FAST = {"hidden_layer_sizes": (16,), "max_epochs": 8, "batch_size": 64, "learning_rate": 2e-2, "patience": 3}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 5))
    w = rng.standard_normal(5)
    y_reg = X @ w + 0.1 * rng.standard_normal(120)
    y_cls = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1).astype(int)  # 3 classes
    Y_tag = np.stack([X[:, 0] > 0, X[:, 1] > 0, X[:, 0] + X[:, 2] > 0.5], axis=1).astype(int)
    return X, y_reg, y_cls, Y_tag


# ------------------------------------------------------------------------------------------------ Regressor
def test_regressor_fits_a_linear_signal(data):
    X, y, _, _ = data
    reg = Regressor(random_state=0, **FAST).fit(X[:100], y[:100])
    assert reg.predict(X[100:]).shape == (20,)
    assert reg.score(X[100:], y[100:]) > 0.8
    assert isinstance(reg.history_, History) and "val_loss" in reg.history_.history
    assert reg.n_iter_ == len(reg.history_.epoch) >= 1
    assert reg.n_features_in_ == 5


def test_regressor_multioutput_and_target_scale(data):
    X, y, _, _ = data
    Y = np.stack([y * 1000.0 + 5e4, -y], axis=1)  # targets are standardised internally
    reg = Regressor(random_state=0, **FAST).fit(X, Y)
    pred = reg.predict(X)
    assert pred.shape == (120, 2)
    assert reg.score(X, Y) > 0.8


def test_same_seed_same_model_and_global_seed_untouched(data):
    from dlcore import nn
    from dlcore.nn import init

    X, y, _, _ = data
    nn.manual_seed(123)
    expected = init.generator().random()
    nn.manual_seed(123)
    a = Regressor(random_state=3, **FAST).fit(X, y).predict(X)
    assert init.generator().random() == expected  # fit drew from its own generator
    b = Regressor(random_state=3, **FAST).fit(X, y).predict(X)
    np.testing.assert_array_equal(a, b)
    c = Regressor(random_state=4, **FAST).fit(X, y).predict(X)
    assert not np.array_equal(a, c)


def test_get_set_params_and_clone():
    reg = Regressor(hidden_layer_sizes=(8, 4), random_state=1)
    params = reg.get_params()
    assert params["hidden_layer_sizes"] == (8, 4) and params["random_state"] == 1 and params["verbose"] is False
    reg.set_params(max_epochs=3)
    assert clone(reg).max_epochs == 3
    assert set(Tagger().get_params()) == set(Classifier().get_params()) | {"threshold"}


def test_no_early_stopping_runs_every_epoch(data):
    X, y, _, _ = data
    reg = Regressor(random_state=0, early_stopping=False, **{**FAST, "max_epochs": 5}).fit(X, y)
    assert reg.n_iter_ == 5 and "val_loss" not in reg.history_.history


def test_verbose_prints_epochs(data, capsys):
    X, y, _, _ = data
    Regressor(random_state=0, verbose=1, **{**FAST, "max_epochs": 2}).fit(X, y)
    assert "epoch 1/2" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("Est", [Regressor, Classifier, Tagger])
def test_bad_inputs(Est, data):
    X, y_reg, y_cls, Y_tag = data
    y = {Regressor: y_reg, Classifier: y_cls, Tagger: Y_tag}[Est]
    Xnan = X.copy()
    Xnan[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        Est(**FAST).fit(Xnan, y)
    with pytest.raises(NotFittedError):
        Est().predict(X)
    est = Est(random_state=0, **FAST).fit(X, y)
    with pytest.raises(ValueError, match="features"):
        est.predict(X[:, :4])
    with pytest.raises(ValueError, match="NaN"):
        est.predict(Xnan)
    with pytest.raises(ValueError, match="inconsistent numbers of samples|samples"):
        Est(**FAST).fit(X, y[:-1])


@pytest.mark.parametrize("param, value", [("max_epochs", 0), ("batch_size", 0), ("learning_rate", -1.0),
                                          ("validation_fraction", 1.5), ("patience", 0), ("dropout", 1.0),
                                          ("hidden_layer_sizes", (8, 0)), ("activation", "swish2")])
def test_bad_hyperparameters(param, value, data):
    X, y, _, _ = data
    with pytest.raises(ValueError, match=param if param != "activation" else "activation"):
        Regressor(**{**FAST, param: value}).fit(X, y)


# ------------------------------------------------------------------------------------------------ Classifier
def test_classifier_string_labels_and_proba(data):
    X, _, y, _ = data
    names = np.array(["cat", "dog", "emu"])[y]
    clf = Classifier(random_state=0, **FAST).fit(X, names)
    assert list(clf.classes_) == ["cat", "dog", "emu"]
    pred = clf.predict(X)
    assert pred.dtype == names.dtype and set(pred) <= set(names)
    proba = clf.predict_proba(X)
    assert proba.shape == (120, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(1)], pred)
    assert clf.score(X, names) > 0.8
    assert "val_accuracy" in clf.history_.history


def test_classifier_rejects_one_class_multilabel_and_continuous(data):
    X, y_reg, _, Y_tag = data
    with pytest.raises(ValueError, match="one class"):
        Classifier(**FAST).fit(X, np.zeros(len(X)))
    with pytest.raises(ValueError, match="Tagger"):
        Classifier(**FAST).fit(X, Y_tag)
    with pytest.raises(ValueError, match="Unknown label type"):
        Classifier(**FAST).fit(X, y_reg)


# ------------------------------------------------------------------------------------------------ Tagger
def test_tagger_multilabel(data):
    X, _, _, Y = data
    tagger = Tagger(random_state=0, **FAST).fit(X, Y)
    pred = tagger.predict(X)
    assert pred.shape == Y.shape and set(np.unique(pred)) <= {0, 1}
    proba = tagger.predict_proba(X)
    assert proba.shape == Y.shape and proba.min() >= 0 and proba.max() <= 1
    np.testing.assert_array_equal(pred, (proba >= 0.5).astype(int))
    assert np.mean(pred == Y) > 0.85
    assert "val_f1" in tagger.history_.history
    strict = Tagger(random_state=0, threshold=0.9, **FAST).fit(X, Y)
    assert strict.predict(X).sum() <= pred.sum()


def test_tagger_one_label_per_sample(data):
    X, _, y, _ = data
    tagger = Tagger(random_state=0, **FAST).fit(X, y)
    assert tagger.predict(X).shape == (120,)
    np.testing.assert_allclose(tagger.predict_proba(X).sum(axis=1), 1.0)
    binary = Tagger(random_state=0, **FAST).fit(X, np.array(["no", "yes"])[(y > 0).astype(int)])
    assert binary.predict_proba(X).shape == (120, 2)
    assert set(binary.predict(X)) <= {"no", "yes"}


def test_tagger_rejects_continuous_targets(data):
    X, y, _, _ = data
    with pytest.raises(ValueError):
        Tagger(**FAST).fit(X, np.stack([y, y], axis=1))


# ------------------------------------------------------------------------------------------------ sklearn
# Every check in scikit-learn's suite passes; none is expected to fail (see the class docstrings).
@parametrize_with_checks([Regressor(**FAST), Classifier(**FAST), Tagger(**FAST)])
def test_sklearn_compatible(estimator, check):
    check(estimator)
