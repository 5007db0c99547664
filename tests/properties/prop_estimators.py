"""Property tests of the estimators genfast.KMeans, GaussianMixture and Gaussian on numpy
arrays and CPU torch tensors (see propcheck.py for the strategies and the oracle).

Validation is scikit-learn's (validate_data): float32/float64 kept, other real dtypes (ints,
bool, float16, numeric object arrays) become float64; complex, NaN and inf raise a
ValueError/TypeError naming X. A fit either raises a ValueError/TypeError naming X or one of
the estimator's parameters (n_clusters, n_components, reg_covar: a component that is not
positive definite), or its results agree with genfast.reference on its own fitted model:
- KMeans: every label is a nearest centre within the rounding bound of prop_ops (the fit's
  labels with X centred on its mean, as scikit-learn computes them: an outlier that dominates
  the mean costs the other points eps |mean| of their precision), inertia_ is
  the reference's sum of squared distances to those labels, predict/score/transform agree.
  Contract for extreme values: |X| must stay within half the ops' limit (sqrt(max / (4 D)) / 2,
  as the fit centres X), else ValueError naming X.
- GaussianMixture: init_params='kmeans' inherits KMeans' range rule; weights sum to 1, score_samples / predict_proba are the reference's log
  p(x) / responsibilities of the fitted parameters, predict their argmax up to rounding ties.
- Gaussian: mean_ and covariance_ are reference.gaussian_mle (+ reg_covar), score_samples the
  reference log density of the fitted parameters.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import genfast
from genfast import reference

import propcheck as pc
from propcheck import Expect, args, assert_close, examples, kinds, outcome, sizes
from prop_ops import assert_labels_by_distance, log_terms, assert_log_densities

ESTIMATOR_DTYPES = {"numpy": pc._WEIGHTED["numpy"], "torch": pc._WEIGHTED["torch"]}


def expect_X(e, X, N, D, min_samples=1):
    """scikit-learn's validate_data as the estimators use it: (values, dtype)."""
    if X.dtype in ("complex128", "complex64"):
        e.invalid("X")
        return None, None
    dtype = X.dtype if X.dtype in ("float32", "float64") else "float64"
    v = X.stored.astype(np.float64) if X.dtype != "object" else X.stored.astype(np.float64)
    if not np.isfinite(v).all() or N < min_samples or D == 0:
        e.invalid("X")
    return v, dtype


def kmeans_fit_limit(dtype, D):
    """The largest |X| KMeans.fit takes: half the ops' limit (it centres X)."""
    return math.sqrt(float(np.finfo(dtype).max) / (4 * D)) / 2


def quiet(call):
    """call() with the estimators' expected warnings (convergence, few distinct points) muted."""
    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return call()
    return run


@given(kind=kinds, N=sizes(0, 30), D=sizes(0, 5), K=sizes(1, 5), seed=st.integers(0, 2**16), data=st.data())
@examples(40)
def test_kmeans(kind, N, D, K, seed, data):
    X = data.draw(args((N, D), kind, dtypes=ESTIMATOR_DTYPES[kind]), "X")
    init = data.draw(st.sampled_from(["k-means++", "random"]), "init")
    pc.record_example("test_kmeans", dict(X=X, n_clusters=K, init=init, seed=seed))
    e = Expect()
    xv, dtype = expect_X(e, X, N, D)
    if e.ok:
        if N < K:
            e.invalid("n_clusters")
        if np.abs(xv.astype(dtype)).max() > kmeans_fit_limit(dtype, D):
            e.invalid("X")
    km = genfast.KMeans(n_clusters=K, init=init, n_init=1, max_iter=20, random_state=seed)
    status, res = outcome(quiet(lambda: km.fit(X.value)), {"X": X.value}, expect=e,
                          may_blame=("n_samples",))
    if status == "rejected":
        return
    x = xv.astype(dtype).astype(np.float64)
    C = np.asarray(km.cluster_centers_, dtype=np.float64)
    assert km.cluster_centers_.shape == (K, D) and km.cluster_centers_.dtype == np.dtype(dtype)
    assert np.isfinite(C).all(), "non-finite centres"
    labels = np.asarray(km.labels_)
    assert labels.shape == (N,) and labels.dtype == np.int64
    # the final labels describe the returned centres (rounded to X's dtype: the bound covers
    # it), computed on X centred on its mean (as scikit-learn does)
    sq = ((x - C[labels]) ** 2).sum(1)
    mean = x.mean(0)
    assert_labels_by_distance(x[None], C[None], labels[None], sq[None].astype(dtype), dtype, shift=mean)
    # inertia_ sums the kernel's squared distances (in X's dtype: a distance below its range is
    # 0) on the centred data; the public centres are rounded back to X's dtype, which moves
    # each distance by up to eps (|x| + |c|)^2
    assert_close(np.array(km.inertia_), pc.rounded(sq, dtype).sum(), dtype="float64", what="inertia_",
                 rtol=pc.RTOL[dtype], scale=((np.abs(x) + np.abs(C[labels])) ** 2).sum(),
                 atol=4 * N * float(np.finfo(dtype).tiny))
    pred = pc.to_np64(km.predict(X.value)).astype(np.int64)
    assert_labels_by_distance(x[None], C[None], pred[None], ((x - C[pred]) ** 2).sum(1)[None].astype(dtype), dtype)
    # (predict runs on X as given: the ops' bound)
    dist = pc.to_np64(km.transform(X.value))
    ref_dist = np.sqrt(((x[:, None, :] - C[None]) ** 2).sum(-1))
    scale = np.sqrt((x ** 2).sum(1))[:, None] + np.sqrt((C ** 2).sum(1))[None]
    # (from squared distances in X's dtype: below its smallest normal they flush to 0)
    assert_close(dist, ref_dist, dtype="float64", what="transform", scale=scale, rtol=math.sqrt(pc.RTOL[dtype]),
                 atol=math.sqrt(8 * D * float(np.finfo(dtype).tiny)))


@given(kind=kinds, N=sizes(0, 30), D=sizes(0, 4), K=sizes(1, 3), seed=st.integers(0, 2**16), data=st.data())
@examples(40)
def test_gaussian_mixture(kind, N, D, K, seed, data):
    X = data.draw(args((N, D), kind, dtypes=ESTIMATOR_DTYPES[kind]), "X")
    cov = data.draw(st.sampled_from(["full", "tied", "diag", "spherical"]), "covariance_type")
    init = data.draw(st.sampled_from(["kmeans", "k-means++", "random", "random_from_data"]), "init_params")
    pc.record_example("test_gaussian_mixture", dict(X=X, n_components=K, covariance_type=cov, init_params=init,
                                                    seed=seed))
    e = Expect()
    xv, dtype = expect_X(e, X, N, D, min_samples=2)
    if e.ok and N < K:
        e.invalid("n_components")
    if e.ok and init == "kmeans" and np.abs(xv).max() > kmeans_fit_limit(dtype, D):
        e.invalid("X")  # the k-means initialisation's range rule
    gm = genfast.GaussianMixture(n_components=K, covariance_type=cov, init_params=init, max_iter=10,
                                 random_state=seed)
    status, res = outcome(quiet(lambda: gm.fit(X.value)), {"X": X.value}, expect=e,
                          may_blame=("reg_covar", "n_samples"), numerical_failure="reg_covar")
    if status == "rejected":
        return
    x = xv.astype(dtype).astype(np.float64)
    w = np.asarray(gm.weights_, dtype=np.float64)
    assert gm.weights_.dtype == np.dtype(dtype) and np.isfinite(w).all()
    assert abs(w.sum() - 1) < 1e-5, w.sum()
    params = (w, np.asarray(gm.means_, np.float64), np.asarray(gm.precisions_cholesky_, np.float64))
    ref_prob, ref_resp, scale = log_terms(x, *params, cov)
    log_prob = gm.score_samples(X.value)
    pc.check_output(log_prob, kind=kind, dtype=dtype, shape=(N,), what="score_samples")
    proba = pc.to_np64(gm.predict_proba(X.value))
    assert_log_densities(log_prob, None, ref_prob, None, scale, dtype)
    with np.errstate(all="ignore"):
        ref_proba = np.exp(ref_resp)
    assert_close(proba, ref_proba, dtype=dtype, what="predict_proba", scale=1.0,
                 rtol=min(1.0, 8 * pc.EPS[dtype] * (float(scale.max()) + 1)) if N else 0)
    pred = pc.to_np64(gm.predict(X.value)).astype(np.int64)
    best = ref_proba.max(1) if N else np.zeros(0)
    chosen = np.take_along_axis(ref_proba, pred[:, None], 1)[:, 0] if N else np.zeros(0)
    assert (chosen >= best - 16 * pc.EPS[dtype] * (scale + 1)).all(), "predict is not the most probable component"


@given(kind=kinds, N=sizes(0, 30), D=sizes(0, 5), data=st.data())
@examples(40)
def test_gaussian(kind, N, D, data):
    X = data.draw(args((N, D), kind, dtypes=ESTIMATOR_DTYPES[kind]), "X")
    cov = data.draw(st.sampled_from(["full", "tied", "diag", "spherical"]), "covariance_type")
    reg = data.draw(st.sampled_from([0.0, 1e-6, 1.0]), "reg_covar")
    pc.record_example("test_gaussian", dict(X=X, covariance_type=cov, reg_covar=reg))
    e = Expect()
    xv, dtype = expect_X(e, X, N, D)
    if e.ok and N < 2 and reg == 0:
        e.invalid("n_samples")
    g = genfast.Gaussian(cov, reg_covar=reg)
    status, res = outcome(lambda: g.fit(X.value), {"X": X.value}, expect=e, may_blame=("reg_covar", "n_samples"),
                          numerical_failure="reg_covar")
    if status == "rejected":
        return
    x = xv.astype(dtype).astype(np.float64)
    mean, covariance = reference.gaussian_mle(x, cov)
    spread = np.abs(x - mean).max(0) if N else np.zeros(D)
    # the mean's own rounding, eps |x|, moves the covariance by up to (4 eps |x|)^2 (a constant
    # feature may get a variance of (eps |x|)^2 instead of 0)
    mean_err = 4 * pc.EPS[dtype] * np.abs(x).max(0) if N else np.zeros(D)
    assert_close(g.mean_, mean, dtype=dtype, what="mean_", scale=np.abs(x).max(0))
    if cov in ("full", "tied"):
        want, scale = covariance + reg * np.eye(D), np.outer(spread, spread) + reg
    elif cov == "diag":
        want, scale = covariance + reg, spread ** 2 + reg
    else:
        want, scale = covariance + reg, float((spread ** 2).mean()) + reg
    mean_err2 = {"full": np.outer(mean_err, mean_err), "tied": np.outer(mean_err, mean_err),
                 "diag": mean_err ** 2, "spherical": float((mean_err ** 2).mean()) if D else 0.0}[cov]
    # (about the mean m + d the covariance is off by d_i d_j: the first-order terms cancel)
    assert_close(np.asarray(g.covariance_), want, dtype=dtype, what="covariance_", scale=scale, atol=mean_err2)
    log_prob = g.score_samples(X.value)
    pc.check_output(log_prob, kind=kind, dtype=dtype, shape=(N,), what="score_samples")
    P = np.asarray(g.precision_cholesky_, np.float64)
    P = P.reshape(1) if cov == "spherical" else P if cov == "tied" else P[None]
    ref_prob, _, lscale = log_terms(x, np.ones(1), np.asarray(g.mean_, np.float64)[None], P, cov)
    assert_log_densities(log_prob, None, ref_prob, None, lscale, dtype)
