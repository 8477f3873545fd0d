"""Quality bars of the task estimators on real data (issue 6), each with default arguments, a fixed seed and
a held-out split, against a scikit-learn baseline. Slow: run with

    .venv/bin/python -m pytest tests/dlcore/tasks/test_quality.py -m slow -s

``-s`` shows one line per bar: the metric, the baseline and the wall time of the fit.
"""
import time

import numpy as np
import pytest
from sklearn.datasets import load_diabetes, load_digits, make_blobs, make_multilabel_classification
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split

from dlcore.tasks import AutoEncoder, Classifier, KMeans, MaskedPretrainer, Regressor, Tagger

pytestmark = pytest.mark.slow


def report(name, metric, value, baseline_name, baseline, seconds, bar):
    print(f"\n[quality] {name}: {metric} {value:.4f} (bar: {bar}) | {baseline_name} {baseline:.4f} | "
          f"fit {seconds:.1f} s wall")


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)


def digit_tags(y):
    """even, prime, >= 5, has a closed loop (0 6 8 9): four tags per digit."""
    return np.stack([y % 2 == 0, np.isin(y, [2, 3, 5, 7]), y >= 5, np.isin(y, [0, 6, 8, 9])], axis=1).astype(int)


# ------------------------------------------------------------------------------------------------ supervised
def test_regressor_diabetes():
    from sklearn.linear_model import LinearRegression

    X, y = load_diabetes(return_X_y=True)
    # the usual 80/20 split of this data set; R^2 on diabetes moves by +-0.05 from split to split (a
    # linear model scores 0.36 to 0.47 over train_test_split seeds 0-4), so the baseline is printed beside
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=42)
    reg, seconds = timed(lambda: Regressor(random_state=0).fit(Xtr, ytr))
    r2 = reg.score(Xte, yte)
    report("Regressor / diabetes", "R^2", r2, "LinearRegression", LinearRegression().fit(Xtr, ytr).score(Xte, yte),
           seconds, ">= 0.45")
    assert r2 >= 0.45


def test_classifier_digits(digits):
    from sklearn.neural_network import MLPClassifier

    Xtr, Xte, ytr, yte = digits
    clf, seconds = timed(lambda: Classifier(random_state=0).fit(Xtr, ytr))
    acc = clf.score(Xte, yte)
    base = MLPClassifier(random_state=0, max_iter=500).fit(Xtr, ytr).score(Xte, yte)
    report("Classifier / digits", "accuracy", acc, "sklearn MLPClassifier", base, seconds, ">= 0.97")
    assert acc >= 0.97


def test_tagger_digit_tags(digits):
    from sklearn.neural_network import MLPClassifier

    Xtr, Xte, ytr, yte = digits
    Ttr, Tte = digit_tags(ytr), digit_tags(yte)
    tagger, seconds = timed(lambda: Tagger(random_state=0).fit(Xtr, Ttr))
    f1 = f1_score(Tte, tagger.predict(Xte), average="micro")
    base = f1_score(Tte, MLPClassifier(random_state=0, max_iter=500).fit(Xtr, Ttr).predict(Xte), average="micro")
    report("Tagger / digit tags", "micro-F1", f1, "sklearn MLPClassifier", base, seconds, ">= 0.95")
    assert f1 >= 0.95


def test_tagger_make_multilabel():
    from sklearn.neural_network import MLPClassifier

    X, Y = make_multilabel_classification(n_samples=2000, n_features=20, n_classes=5, random_state=0)
    Xtr, Xte, Ytr, Yte = train_test_split(X, Y, test_size=0.25, random_state=0)
    tagger, seconds = timed(lambda: Tagger(random_state=0).fit(Xtr, Ytr))
    f1 = f1_score(Yte, tagger.predict(Xte), average="micro")
    base = f1_score(Yte, MLPClassifier(random_state=0, max_iter=500).fit(Xtr, Ytr).predict(Xte), average="micro")
    report("Tagger / make_multilabel_classification", "micro-F1", f1, "sklearn MLPClassifier", base, seconds,
           "report both; >= baseline - 0.02")
    assert f1 >= base - 0.02


# ------------------------------------------------------------------------------------------------ KMeans
def test_kmeans_digits_matches_sklearn():
    from sklearn.cluster import KMeans as SkKMeans
    from sklearn.metrics import adjusted_rand_score as ari

    X, y = load_digits(return_X_y=True)
    # ten restarts each: the best-of-10 solutions are what the two implementations should agree on
    ours, seconds = timed(lambda: KMeans(n_clusters=10, n_init=10, random_state=0).fit(X))
    theirs = SkKMeans(n_clusters=10, n_init=10, random_state=0).fit(X)
    a, b = ari(y, ours.labels_), ari(y, theirs.labels_)
    report("KMeans / digits, n_init=10", "ARI", a, "sklearn KMeans", b, seconds, "within 0.02")
    assert abs(a - b) <= 0.02
    # defaults (one k-means++ run each): single runs scatter by +-0.03, so compare means over 20 seeds
    a = np.mean([ari(y, KMeans(n_clusters=10, random_state=s).fit(X).labels_) for s in range(20)])
    b = np.mean([ari(y, SkKMeans(n_clusters=10, random_state=s).fit(X).labels_) for s in range(20)])
    report("KMeans / digits, defaults, mean of 20 seeds", "ARI", a, "sklearn KMeans", b, 0.0, "within 0.02")
    assert abs(a - b) <= 0.02


@pytest.mark.parametrize("case", ["blobs-defaults", "noise-50-iterations"])
def test_kmeans_speed_200k_x_64(case):
    from sklearn.cluster import KMeans as SkKMeans

    if case == "blobs-defaults":
        X, _ = make_blobs(n_samples=200_000, n_features=64, centers=8, random_state=0)
        kw = {}
    else:  # no structure: every run does exactly 50 Lloyd iterations, so the work is the same
        X = np.random.default_rng(0).standard_normal((200_000, 64))
        kw = {"max_iter": 50, "tol": 0.0}
    X = X.astype(np.float32)
    KMeans(n_clusters=8, max_iter=2).fit(X[:1000])  # compile (or load the cached) kernels first
    ours, theirs = [], []
    for rep in range(3):  # alternate, keep the best of 3: the machine is shared
        ours.append(timed(lambda rep=rep: KMeans(n_clusters=8, random_state=rep, **kw).fit(X))[1])
        theirs.append(timed(lambda rep=rep: SkKMeans(n_clusters=8, random_state=rep, **kw).fit(X))[1])
    speedup = min(theirs) / min(ours)
    report(f"KMeans speed / 200k x 64 float32, {case}", "speed-up vs sklearn", speedup,
           "sklearn seconds", min(theirs), min(ours), ">= 1.0x")
    assert speedup >= 1.0


# ------------------------------------------------------------------------------------------------ representations
def test_autoencoder_beats_pca(digits):
    from sklearn.decomposition import PCA

    Xtr, Xte, _, _ = digits
    ae, seconds = timed(lambda: AutoEncoder(n_components=8, random_state=0).fit(Xtr))
    err = ae.reconstruction_error(Xte)
    pca = PCA(n_components=8).fit(Xtr)
    base = float(np.mean((pca.inverse_transform(pca.transform(Xte)) - Xte) ** 2))
    report("AutoEncoder(8) / digits", "held-out reconstruction MSE", err, "PCA(8)", base, seconds, "< PCA")
    assert err < base


def test_masked_pretrainer_linear_probe(digits):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    Xtr, Xte, ytr, yte = digits
    mp, seconds = timed(lambda: MaskedPretrainer(n_components=32, random_state=0).fit(Xtr))  # no labels
    Ftr, Fte = mp.transform(Xtr), mp.transform(Xte)

    def probe(Atr, Ate, scale):
        accs = []
        for s in range(5):  # five draws of the 10% of training labels the probe may use
            idx = np.random.default_rng(s).choice(len(Atr), len(Atr) // 10, replace=False)
            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)) if scale \
                else LogisticRegression(max_iter=5000)
            accs.append(model.fit(Atr[idx], ytr[idx]).score(Ate, yte))
        return float(np.mean(accs))

    # the same probe, with and without standardising its inputs; the raw pixels keep the better of the two
    ours = max(probe(Ftr, Fte, True), probe(Ftr, Fte, False))
    base = max(probe(Xtr, Xte, True), probe(Xtr, Xte, False))
    report("MaskedPretrainer(32) / digits, 10% labels", "linear-probe accuracy", ours, "probe on raw pixels", base,
           seconds, "> raw")
    assert ours > base
