"""Fast tests of dlcore.tasks.KMeans (and its kernels), AutoEncoder and MaskedPretrainer: tiny data, API
conventions, bad inputs. Quality runs on the digits are in test_quality.py."""
import numpy as np
import pytest
from dlcore.kernels.numba import kmeans as nb_kmeans
from dlcore.kernels.numpy import kmeans as np_kmeans
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.exceptions import NotFittedError
from sklearn.metrics import adjusted_rand_score
from sklearn.utils.estimator_checks import parametrize_with_checks

import dlcore
from dlcore.tasks import AutoEncoder, KMeans, MaskedPretrainer
from dlcore.train import History

KERNELS = [pytest.param(np_kmeans, id="numpy"), pytest.param(nb_kmeans, id="numba")]
FAST_NET = {"hidden_layer_sizes": (16,), "max_epochs": 6, "batch_size": 32, "learning_rate": 3e-3, "patience": 3}


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=300, n_features=4, centers=3, cluster_std=0.5, random_state=0)
    return X, y


# ------------------------------------------------------------------------------------------------ kernels
@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, k, d", [(1000, 37, 13), (5, 1, 3), (300, 8, 64), (257, 300, 2)])
def test_assign_matches_brute_force(kernels, dtype, n, k, d):
    rng = np.random.default_rng(n + k + d)
    X = rng.standard_normal((n, d)).astype(dtype)
    C = rng.standard_normal((k, d)).astype(dtype)
    d2 = ((X[:, None, :].astype(np.float64) - C[None].astype(np.float64)) ** 2).sum(-1)
    labels, mind = kernels.assign(X, C)
    assert labels.dtype == np.int64 and labels.shape == (n,) and mind.dtype == dtype
    np.testing.assert_allclose(mind, d2.min(1), rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)
    # the chosen center is a nearest one (up to rounding: near-ties may go either way)
    np.testing.assert_allclose(d2[np.arange(n), labels], d2.min(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(kernels.sq_distances(X, C), d2, rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-5)


@pytest.mark.parametrize("kernels", KERNELS)
def test_lloyd_step_sums_and_counts(kernels):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((2000, 5)).astype(np.float32)
    C = X[:6].copy()
    labels, mind, sums, counts = kernels.lloyd_step(X, C)
    ref_labels, ref_mind = kernels.assign(X, C)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_array_equal(mind, ref_mind)
    assert counts.sum() == 2000 and counts.dtype == np.int64
    for j in range(6):
        np.testing.assert_allclose(sums[j], X[labels == j].astype(np.float64).sum(0), rtol=1e-9, atol=1e-9)


def test_numba_matches_numpy_reference_and_ties_go_low():
    X = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 2.0]], np.float32)
    C = np.array([[0.5, 0.0], [0.5, 0.0], [2.0, 2.0]], np.float32)  # duplicate centers: a tie
    for kernels in (np_kmeans, nb_kmeans):
        labels, mind = kernels.assign(X, C)
        np.testing.assert_array_equal(labels, [0, 0, 2])
        np.testing.assert_allclose(mind, [0.25, 0.25, 0.0])
    rng = np.random.default_rng(2)
    X = rng.standard_normal((3000, 16))
    C = rng.standard_normal((9, 16))
    for a, b in zip(nb_kmeans.lloyd_step(X, C), np_kmeans.lloyd_step(X, C)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_numba_kernels_deterministic_across_thread_counts():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((20000, 8)).astype(np.float32)
    C = X[:5].copy()
    ref = nb_kmeans.lloyd_step(X, C)
    saved = dlcore.get_num_threads()
    try:
        dlcore.set_num_threads(1)
        one = nb_kmeans.lloyd_step(X, C)
    finally:
        dlcore.set_num_threads(saved)
    for a, b in zip(ref, one):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kernels", KERNELS)
def test_kernels_empty_and_bad_shapes(kernels):
    labels, mind = kernels.assign(np.zeros((0, 3), np.float32), np.zeros((2, 3), np.float32))
    assert labels.shape == (0,) and mind.shape == (0,)
    if kernels is nb_kmeans:
        with pytest.raises(ValueError):
            kernels.assign(np.zeros((4, 3), np.float32), np.zeros((2, 2), np.float32))
        with pytest.raises(TypeError):
            kernels.assign(np.zeros((4, 3), np.float32), np.zeros((2, 3), np.float64))


# ------------------------------------------------------------------------------------------------ KMeans
def test_kmeans_recovers_blobs(blobs):
    X, y = blobs
    km = KMeans(n_clusters=3, random_state=0).fit(X)
    assert adjusted_rand_score(y, km.labels_) == 1.0
    assert km.cluster_centers_.shape == (3, 4) and km.labels_.dtype == np.int64
    np.testing.assert_array_equal(km.predict(X), km.labels_)
    np.testing.assert_array_equal(km.fit_predict(X), km.labels_)
    d = km.transform(X)
    assert d.shape == (300, 3)
    np.testing.assert_allclose(km.score(X), -np.sum(d.min(1) ** 2), rtol=1e-9)
    np.testing.assert_allclose(km.inertia_, -km.score(X), rtol=1e-9)
    assert isinstance(km.history_, History) and km.history_["inertia"][-1] == pytest.approx(km.inertia_)
    assert 1 <= km.n_iter_ <= 300
    assert list(km.get_feature_names_out()) == ["kmeans0", "kmeans1", "kmeans2"]


def test_kmeans_matches_sklearn_inertia(blobs):
    from sklearn.cluster import KMeans as SkKMeans

    X, _ = blobs
    ours = KMeans(n_clusters=5, n_init=5, random_state=0).fit(X)
    theirs = SkKMeans(n_clusters=5, n_init=5, random_state=0).fit(X)
    assert ours.inertia_ <= theirs.inertia_ * 1.02


def test_kmeans_verbose_prints_iterations(blobs, capsys):
    KMeans(n_clusters=3, random_state=0, verbose=1).fit(blobs[0])
    assert "KMeans iteration 1: inertia" in capsys.readouterr().out


def test_kmeans_float32_stays_float32_and_numpy_backend_agrees(blobs):
    X, _ = blobs
    km32 = KMeans(n_clusters=3, random_state=0).fit(X.astype(np.float32))
    assert km32.cluster_centers_.dtype == np.float32
    with dlcore.backend("numpy"):
        ref = KMeans(n_clusters=3, random_state=0).fit(X)
    fast = KMeans(n_clusters=3, random_state=0).fit(X)
    np.testing.assert_array_equal(ref.labels_, fast.labels_)
    np.testing.assert_allclose(ref.cluster_centers_, fast.cluster_centers_, rtol=1e-10)


def test_kmeans_init_options_and_reproducibility(blobs):
    X, _ = blobs
    a = KMeans(n_clusters=3, init="random", random_state=1).fit(X)
    b = KMeans(n_clusters=3, init="random", random_state=1).fit(X)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    init = X[:3]
    c = KMeans(n_clusters=3, init=init, max_iter=1).fit(X)
    assert c.n_iter_ == 1
    with pytest.raises(ValueError, match="shape"):
        KMeans(n_clusters=3, init=X[:2]).fit(X)


def test_kmeans_empty_cluster_is_relocated():
    X = np.array([[0.0], [0.1], [10.0], [10.1]])
    init = np.array([[0.05], [10.05], [100.0]])  # the third center attracts nothing
    km = KMeans(n_clusters=3, init=init).fit(X)
    assert len(np.unique(km.labels_)) == 3
    assert np.all(np.isfinite(km.cluster_centers_))


def test_kmeans_bad_inputs(blobs):
    X, _ = blobs
    with pytest.raises(ValueError, match="n_samples=2 should be >= n_clusters=3"):
        KMeans(n_clusters=3).fit(X[:2])
    Xnan = X.copy()
    Xnan[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        KMeans(n_clusters=3).fit(Xnan)
    with pytest.raises(NotFittedError):
        KMeans().predict(X)
    km = KMeans(n_clusters=3, random_state=0).fit(X)
    with pytest.raises(ValueError, match="features"):
        km.predict(X[:, :2])
    for bad in ({"n_clusters": 0}, {"max_iter": 0}, {"tol": -1.0}, {"n_init": 0}, {"init": "kmeans"}):
        with pytest.raises(ValueError):
            KMeans(**{"n_clusters": 3, **bad}).fit(X)


# ------------------------------------------------------------------------------------------------ networks
@pytest.mark.parametrize("Est, n_components", [(AutoEncoder, 2), (MaskedPretrainer, 3)])
def test_representation_learners(Est, n_components, blobs):
    X, _ = blobs
    est = Est(n_components=n_components, random_state=0, **FAST_NET).fit(X)
    Z = est.transform(X)
    assert Z.shape == (300, n_components) and Z.dtype == np.float64
    np.testing.assert_array_equal(est.fit_transform(X), Z)  # same seed, same model
    assert isinstance(est.history_, History) and est.n_iter_ == len(est.history_.epoch)
    assert est.get_feature_names_out()[0] == f"{Est.__name__.lower()}0"
    assert clone(est).get_params() == est.get_params()
    with pytest.raises(ValueError, match="features"):
        est.transform(X[:, :3])
    Xnan = X.copy()
    Xnan[1, 1] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        Est(n_components=n_components, **FAST_NET).fit(Xnan)
    with pytest.raises(NotFittedError):
        Est().transform(X)
    with pytest.raises(ValueError, match="n_components"):
        Est(n_components=0, **FAST_NET).fit(X)
    with pytest.raises(ValueError, match="scaling"):
        Est(scaling="minmax", **FAST_NET).fit(X)


def test_autoencoder_reconstructs(blobs):
    X, _ = blobs
    ae = AutoEncoder(n_components=2, random_state=0, **{**FAST_NET, "max_epochs": 15}).fit(X)
    R = ae.inverse_transform(ae.transform(X))
    assert R.shape == X.shape
    assert ae.reconstruction_error(X) < np.var(X, axis=0).mean()  # better than predicting the mean
    assert ae.score(X) == pytest.approx(-ae.reconstruction_error(X))
    with pytest.raises(ValueError, match="shape"):
        ae.inverse_transform(np.zeros((3, 5)))


def test_masked_pretrainer_ignores_labels_and_checks_mask_ratio(blobs):
    X, y = blobs
    a = MaskedPretrainer(n_components=3, random_state=0, **FAST_NET).fit(X).transform(X)
    b = MaskedPretrainer(n_components=3, random_state=0, **FAST_NET).fit(X, y).transform(X)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="mask_ratio"):
        MaskedPretrainer(mask_ratio=1.0, **FAST_NET).fit(X)


# ------------------------------------------------------------------------------------------------ sklearn
# All of scikit-learn's estimator checks pass for the three; none is expected to fail.
@parametrize_with_checks([KMeans(n_clusters=3), AutoEncoder(n_components=2, **FAST_NET),
                          MaskedPretrainer(n_components=2, **FAST_NET)])
def test_sklearn_compatible(estimator, check):
    check(estimator)
