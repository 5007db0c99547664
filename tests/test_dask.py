"""genfast.dask on a real dask.distributed LocalCluster (2 worker processes, 1 thread each),
started and stopped by a module fixture.

Covers: KMeans and GaussianMixture (all four covariance types) fitted on chunked dask arrays
give the single-machine estimators' parameters, inertia / lower bounds and iteration counts
from the same initial parameters (with uneven chunks, chunks that hold one cluster only,
sample weights and empty clusters); k-means|| is deterministic for a random_state and finds
well-separated clusters; predictions are lazy dask arrays equal to the single-machine ones;
a worker killed (SIGKILL) during a fit leaves the fitted parameters bit-for-bit those of an
undisturbed fit; bad inputs raise errors that name them.
"""

from __future__ import annotations

import os
import signal
import threading
import warnings

import numpy as np
import pytest
from sklearn.datasets import make_blobs

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import genfast  # noqa: E402
import genfast.dask as gdask  # noqa: E402

COV_TYPES = ["full", "tied", "diag", "spherical"]
# Fitted parameters against the single-machine estimator: float64 differs only by the order
# of the float64 chunk sums; float32 chunk statistics are rounded to float32 by the kernels.
PARAM_RTOL = {"float64": 1e-9, "float32": 2e-4}


@pytest.fixture(scope="module")
def client():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                      memory_limit="2GiB") as cluster, distributed.Client(cluster) as client:
            yield client


def blobs(rng, n=3000, d=4, centers=5, dtype="float64", offset=0.0):
    """Blobs sorted by blob, so that a chunk of rows holds one or two clusters only."""
    X, y = make_blobs(n_samples=n, n_features=d, centers=centers, cluster_std=rng.uniform(0.5, 1.5, size=centers),
                      center_box=(-12, 12), random_state=int(rng.integers(2**31)))
    return (X[np.argsort(y, kind="stable")] + offset).astype(dtype)


def uneven_chunks(rng, n, n_chunks=5):
    """Row chunk sizes that add up to n, all different."""
    cuts = np.sort(rng.choice(np.arange(1, n), size=n_chunks - 1, replace=False))
    return tuple(np.diff(np.concatenate([[0], cuts, [n]])).tolist())


def on_cluster(client, X, chunk_rows):
    """X as a dask array persisted on the workers."""
    return client.persist(da.from_array(X, chunks=(chunk_rows, X.shape[1])))


def assert_close(actual, expected, rtol, what, seed):
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64),
                               rtol=rtol, atol=rtol * np.abs(np.asarray(expected, dtype=np.float64)).max(),
                               err_msg=f"{what}; seed={seed}")


# ============================================================================ KMeans
# Far from the origin the chunks are centred (as genfast.KMeans centres X); near it they are not.
@pytest.mark.parametrize("offset, weighted", [(50.0, False), (0.0, True)])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_kmeans_equals_single_machine(client, rng, seed, dtype, offset, weighted):
    X, y = make_blobs(n_samples=3000, n_features=4, centers=5, cluster_std=rng.uniform(0.5, 1.0, size=5),
                      center_box=(-30, 30), random_state=int(rng.integers(2**31)))
    X = (X[np.argsort(y, kind="stable")] + offset).astype(dtype)  # a chunk holds one or two blobs
    sample_weight = rng.uniform(0.2, 3.0, size=len(X)).astype(dtype) if weighted else None
    starts = X[np.searchsorted(np.sort(y), np.arange(5))]  # the first point of each blob
    if dtype == "float64":
        # Two starting centres hold no point: the empty-cluster relocation runs on the chunks.
        init = np.concatenate([starts[:3], np.full((2, X.shape[1]), 1e4)])
    else:
        # float32 rounds the chunk sums once more than one pass over X does: start from one
        # point per blob, so that no point lies within that rounding of two centres.
        init = starts
    chunks = uneven_chunks(rng, len(X))
    Xd = on_cluster(client, X, chunks)
    wd = None if sample_weight is None else da.from_array(sample_weight, chunks=chunks[::-1])  # realigned by fit
    single = genfast.KMeans(5, init=init, tol=0, max_iter=100).fit(X, sample_weight=sample_weight)
    ours = gdask.KMeans(5, init=init, tol=0, max_iter=100).fit(Xd, sample_weight=wd)

    assert single.n_iter_ < 100, f"the single-machine fit should converge (labels stop changing); seed={seed}"
    assert ours.n_iter_ == single.n_iter_, f"n_iter {ours.n_iter_} != {single.n_iter_}; seed={seed}"
    assert ours.cluster_centers_.dtype == np.dtype(dtype)
    assert_close(ours.cluster_centers_, single.cluster_centers_, PARAM_RTOL[dtype], "centres", seed)
    assert_close(ours.inertia_, single.inertia_, PARAM_RTOL[dtype], "inertia", seed)
    assert isinstance(ours.labels_, da.Array)
    np.testing.assert_array_equal(ours.labels_.compute(), single.labels_, err_msg=f"labels; seed={seed}")
    assert isinstance(ours.predict(Xd), da.Array)
    np.testing.assert_array_equal(ours.predict(Xd).compute(), single.predict(X))


def test_kmeans_tolerance_stop_equals_single_machine(client, rng, seed):
    """With the default tol the loop stops on the variance-scaled centre shift, and the final
    inertia is that of the returned centres (one more pass), as in genfast.KMeans."""
    X = blobs(rng, centers=8)
    init = X[rng.choice(len(X), 8, replace=False)]
    single = genfast.KMeans(8, init=init, tol=1e-2).fit(X)
    ours = gdask.KMeans(8, init=init, tol=1e-2).fit(on_cluster(client, X, 700))
    assert ours.n_iter_ == single.n_iter_, f"seed={seed}"
    assert_close(ours.cluster_centers_, single.cluster_centers_, PARAM_RTOL["float64"], "centres", seed)
    assert_close(ours.inertia_, single.inertia_, PARAM_RTOL["float64"], "inertia", seed)


def test_kmeans_parallel_init(client, rng, seed):
    """k-means|| finds well-separated clusters (the inertia of scikit-learn's best of 10
    k-means++ runs), and the same random_state gives the same centres."""
    from sklearn.cluster import KMeans as SKKMeans

    X, _ = make_blobs(n_samples=4000, n_features=3, centers=7, cluster_std=0.3, center_box=(-30, 30),
                      random_state=int(rng.integers(2**31)))
    best = SKKMeans(7, n_init=10, random_state=0).fit(X)
    Xd = on_cluster(client, X, 900)
    first = gdask.KMeans(7, random_state=seed).fit(Xd)
    second = gdask.KMeans(7, random_state=seed).fit(Xd)
    assert first.inertia_ <= best.inertia_ * (1 + 1e-6), f"{first.inertia_} vs {best.inertia_}; seed={seed}"
    np.testing.assert_array_equal(first.cluster_centers_, second.cluster_centers_)


def test_kmeans_parallel_round_that_picks_no_point(client, rng, seed):
    """A k-means|| round may sample no new candidate (here about 1 in 2 rounds, with
    oversampling_factor * K = 0.6 expected picks): the next round keeps d^2(x, C) as it was
    instead of assigning to an empty set of centres (which raised 'C must hold at least one
    centre', seen on 2 of 3 clusters of 600 normal points)."""
    X = rng.standard_normal((600, 3))
    km = gdask.KMeans(2, oversampling_factor=0.3, init_rounds=12, random_state=seed).fit(on_cluster(client, X, 200))
    assert km.cluster_centers_.shape == (2, 3) and np.isfinite(km.inertia_), f"seed={seed}"


# ============================================================================ GaussianMixture
def initial_parameters(rng, X, K, covariance_type):
    """(weights_init, means_init, precisions_init) of a random starting model."""
    D = X.shape[1]
    means = X[rng.choice(len(X), size=K, replace=False)].astype(np.float64)
    spd = [(lambda A: A @ A.T / D + np.eye(D))(rng.standard_normal((D, D))) for _ in range(K)]
    precisions = {"full": np.stack([np.linalg.inv(S) for S in spd]), "tied": np.linalg.inv(spd[0]),
                  "diag": rng.uniform(0.3, 2.0, size=(K, D)), "spherical": rng.uniform(0.3, 2.0, size=K)}
    return rng.dirichlet(np.full(K, 5.0)), means, precisions[covariance_type]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_gmm_equals_single_machine(client, rng, seed, covariance_type, dtype):
    # Far from the origin: the pooled scatter must stay centred.
    X = blobs(rng, dtype=dtype, offset=1e3)
    weights, means, precisions = initial_parameters(rng, X, 4, covariance_type)
    # float32: EM amplifies the rounding of the two summation orders from step to step (after
    # 15 steps one seed in about 50 differed by 5% in one small precision factor); 3 steps
    # still show a scatter that is not centred, which is off from the first step.
    max_iter = 15 if dtype == "float64" else 3
    params = dict(n_components=4, covariance_type=covariance_type, max_iter=max_iter, tol=0, weights_init=weights,
                  means_init=means, precisions_init=precisions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter reached with tol=0
        single = genfast.GaussianMixture(**params).fit(X)
        ours = gdask.GaussianMixture(**params).fit(on_cluster(client, X, uneven_chunks(rng, len(X))))
    rtol = PARAM_RTOL[dtype]
    assert ours.n_iter_ == single.n_iter_ == max_iter
    assert_close(ours.lower_bounds_, single.lower_bounds_, rtol, "lower bounds", seed)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert getattr(ours, name).dtype == np.dtype(dtype), name
        assert_close(getattr(ours, name), getattr(single, name), rtol, name, seed)


def test_gmm_kmeans_init_and_lazy_predictions(client, rng, seed):
    """The default init (responsibilities of genfast.dask.KMeans' labels) on well-separated
    blobs reaches scikit-learn's optimum; score_samples / predict / predict_proba are lazy
    dask arrays equal to the single-machine estimator's with the same parameters."""
    X, _ = make_blobs(n_samples=2000, n_features=4, centers=3, cluster_std=0.3, center_box=(-20, 20),
                      random_state=int(rng.integers(2**31)))
    Xd = on_cluster(client, X, 600)
    ours = gdask.GaussianMixture(3, covariance_type="full", random_state=seed).fit(Xd)
    single = genfast.GaussianMixture(3, covariance_type="full", random_state=seed, n_init=3).fit(X)
    assert ours.converged_
    assert abs(ours.lower_bound_ - single.lower_bound_) < 1e-3, f"seed={seed}"
    twin = genfast.GaussianMixture(3, covariance_type="full")
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_", "n_features_in_"):
        setattr(twin, name, getattr(ours, name))
    lazy = {"score_samples": ours.score_samples(Xd), "predict": ours.predict(Xd), "predict_proba": ours.predict_proba(Xd)}
    for name, result in lazy.items():
        assert isinstance(result, da.Array), name
        assert_close(result.compute(), getattr(twin, name)(X), 1e-12, name, seed)
    np.testing.assert_array_equal(ours.fit_predict(Xd).compute(), twin.predict(X))
    assert_close(ours.score(Xd), twin.score(X), 1e-12, "score", seed)
    assert_close(ours.bic(Xd), twin.bic(X), 1e-12, "bic", seed)


# ============================================================================ a worker killed mid-fit
class _KillDuringFit:
    """Starts a thread that SIGKILLs one worker's process `delay` seconds after `arm()`."""

    def __init__(self, client, delay):
        self.client, self.delay = client, delay
        self.pid = next(iter(client.run(os.getpid).values()))
        self.thread = None

    def arm(self):
        if self.thread is None:
            self.thread = threading.Timer(self.delay, os.kill, (self.pid, signal.SIGKILL))
            self.thread.start()

    def killed_during_fit(self):
        """True once the kill has happened (the fit returned after it) and the nanny has
        started a new worker in its place."""
        fired = self.thread is not None and not self.thread.is_alive() and self.thread.finished.is_set()
        self.client.wait_for_workers(2, timeout=60)
        return fired and self.pid not in self.client.run(os.getpid).values()


@pytest.mark.parametrize("model", ["kmeans", "gmm"])
def test_worker_killed_mid_fit(client, rng, seed, model):
    """SIGKILL one of the two workers during the fit (during the k-means|| rounds, whose
    distances are persisted on the workers, or during EM): the scheduler recomputes the lost
    chunks and the fit returns exactly the parameters of an undisturbed fit."""
    X = blobs(rng, n=6000, d=6, centers=6)
    Xd = on_cluster(client, X, 500)
    killer = _KillDuringFit(client, delay=0.05)

    if model == "kmeans":
        estimator = gdask.KMeans

        class Probe(estimator):
            def _draw_first_candidate(self, *args):
                killer.arm()  # the kill lands in the k-means|| rounds or the Lloyd loop
                return super()._draw_first_candidate(*args)

        params = dict(n_clusters=6, tol=0, max_iter=40, random_state=seed)
        names = ("cluster_centers_", "inertia_", "n_iter_")
    else:
        estimator = gdask.GaussianMixture

        class Probe(estimator):
            def _em_step(self, X, place, params):
                if len(self.calls) == 2:
                    killer.arm()
                self.calls.append(None)
                return super()._em_step(X, place, params)

        weights, means, precisions = initial_parameters(rng, X, 6, "full")
        params = dict(n_components=6, max_iter=25, tol=0, weights_init=weights, means_init=means,
                      precisions_init=precisions)
        names = ("weights_", "means_", "covariances_", "lower_bounds_")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter reached; the scheduler's worker-loss messages
        reference = estimator(**params).fit(Xd)
        disturbed = Probe(**params)
        disturbed.calls = []
        disturbed.fit(Xd)
    assert killer.killed_during_fit(), f"the worker was not killed during the fit; seed={seed}"
    for name in names:
        np.testing.assert_array_equal(getattr(disturbed, name), getattr(reference, name),
                                      err_msg=f"{model} {name} after a worker was killed; seed={seed}")


# ============================================================================ errors
def test_bad_inputs(client):
    X = da.from_array(np.random.default_rng(0).standard_normal((100, 3)), chunks=30)
    with pytest.raises(ValueError, match="init must be 'k-means\\|\\|'"):
        gdask.KMeans(3, init="k-means++").fit(X)
    with pytest.raises(ValueError, match="init should be of shape"):
        gdask.KMeans(3, init=np.zeros((2, 3))).fit(X)
    with pytest.raises(ValueError, match="n_samples=100 should be >= n_clusters=200"):
        gdask.KMeans(200).fit(X)
    with pytest.raises(ValueError, match="X contains NaN"):
        gdask.KMeans(3).fit(da.where(X > 2, np.nan, X))
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        gdask.KMeans(3).fit(X[X[:, 0] > 0])
    with pytest.raises(ValueError, match="sample_weight must be non-negative"):
        gdask.KMeans(3).fit(X, sample_weight=-np.ones(100))
    with pytest.raises(ValueError, match="X must be 2-d"):
        gdask.KMeans(3).fit(X[:, 0])
    fitted = gdask.KMeans(3, random_state=0).fit(X)
    with pytest.raises(ValueError, match="X has 2 features, but KMeans is expecting 3"):
        fitted.predict(X[:, :2])
    with pytest.raises(ValueError, match="init_params must be 'kmeans' for dask arrays"):
        gdask.GaussianMixture(2, init_params="random").fit(X)
    with pytest.raises(ValueError, match="k-means\\|\\| found 1 distinct candidate"):
        gdask.KMeans(3, random_state=0).fit(da.ones((50, 2), chunks=20))
