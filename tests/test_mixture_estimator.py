"""genfast.GaussianMixture against scikit-learn's GaussianMixture, and genfast.Gaussian against
genfast.reference.gaussian_mle and scipy.stats.multivariate_normal.

Covers, for all four covariance types: the lower bound of every EM iteration (and the final
parameters, predict / predict_proba / score_samples / score / bic / aic / sample) against
scikit-learn from the same initial parameters, in float64 (1e-6 relative, in practice ~1e-12)
and float32 (loose, against scikit-learn in float64); the same initial model as scikit-learn
for the same random_state with every init_params; n_init, warm_start and the stopping rule;
a component that loses all its points; a covariance that is not positive definite; bad
parameters and inputs; torch CPU tensors; scikit-learn's check_estimator suite.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import multivariate_normal
from sklearn.datasets import make_blobs
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.mixture import GaussianMixture as SKGaussianMixture
from sklearn.utils.estimator_checks import parametrize_with_checks

import genfast
from genfast import reference

DTYPES = ["float32", "float64"]
COV_TYPES = list(reference.COVARIANCE_TYPES)
INIT_PARAMS = ["kmeans", "k-means++", "random", "random_from_data"]
# Lower bound (mean log-likelihood) against scikit-learn: the float64 bound; float32
# runs the float32 kernels and is compared with scikit-learn in float64.
LB_RTOL = {"float64": 1e-6, "float32": 2e-4}
PARAM_RTOL = {"float64": 1e-7, "float32": 2e-3}


def make_data(rng, n=300, d=3, centers=4, dtype="float64", offset=0.0):
    X, _ = make_blobs(n_samples=n, n_features=d, centers=centers, cluster_std=rng.uniform(0.6, 1.5, size=centers),
                      random_state=int(rng.integers(2**31)))
    return (X + offset).astype(dtype)


def random_spd(rng, d, scale=1.0):
    A = rng.standard_normal((d, d))
    return (A @ A.T / d + np.eye(d)) * scale


def initial_parameters(rng, X, K, covariance_type):
    """(weights_init, means_init, precisions_init) of a reasonable random starting model."""
    D = X.shape[1]
    weights = rng.dirichlet(np.full(K, 5.0))
    means = X[rng.choice(len(X), size=K, replace=False)].astype(np.float64) + 0.1 * rng.standard_normal((K, D))
    if covariance_type == "full":
        prec = np.stack([np.linalg.inv(random_spd(rng, D)) for _ in range(K)])
    elif covariance_type == "tied":
        prec = np.linalg.inv(random_spd(rng, D))
    elif covariance_type == "diag":
        prec = rng.uniform(0.3, 2.0, size=(K, D))
    else:
        prec = rng.uniform(0.3, 2.0, size=K)
    return weights, means, prec


def fit_both(X, K, covariance_type, *, sk_X=None, **kw):
    """(genfast fit on X, scikit-learn fit on sk_X (default X)), ConvergenceWarnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = genfast.GaussianMixture(K, covariance_type=covariance_type, **kw).fit(X)
        theirs = SKGaussianMixture(K, covariance_type=covariance_type, **kw).fit(X if sk_X is None else sk_X)
    return ours, theirs


def assert_same_model(ours, theirs, X, *, dtype, msg):
    """Fitted parameters (relative to their scale) and every scoring method agree."""
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_"):
        a, b = getattr(ours, name), getattr(theirs, name)
        assert a.shape == b.shape, f"{name} shape {a.shape} != {b.shape}; {msg}"
        assert a.dtype == np.dtype(dtype), f"{name} dtype {a.dtype}; {msg}"
        scale = np.abs(b).max()
        np.testing.assert_allclose(a, b, rtol=PARAM_RTOL[dtype], atol=PARAM_RTOL[dtype] * scale, err_msg=f"{name}; {msg}")
    X64 = X.astype(np.float64)
    np.testing.assert_allclose(ours.score_samples(X), theirs.score_samples(X64), rtol=LB_RTOL[dtype],
                               atol=LB_RTOL[dtype] * 10, err_msg=f"score_samples; {msg}")
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X64), atol=1e-6 if dtype == "float64" else 1e-3,
                               err_msg=f"predict_proba; {msg}")
    labels_ours, proba = ours.predict(X), theirs.predict_proba(X64)
    differ = labels_ours != theirs.predict(X64)
    # A label may differ only where scikit-learn's two top responsibilities (nearly) tie.
    rows = np.flatnonzero(differ)
    assert np.all(np.abs(proba[rows, labels_ours[rows]] - proba[rows].max(axis=1)) < 1e-3), f"predict; {msg}"
    np.testing.assert_allclose(ours.score(X), theirs.score(X64), rtol=LB_RTOL[dtype], err_msg=f"score; {msg}")
    np.testing.assert_allclose(ours.bic(X), theirs.bic(X64), rtol=LB_RTOL[dtype], err_msg=f"bic; {msg}")
    np.testing.assert_allclose(ours.aic(X), theirs.aic(X64), rtol=LB_RTOL[dtype], err_msg=f"aic; {msg}")


# =========================================================================== parity with sklearn


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_lower_bound_every_iteration_matches_sklearn(covariance_type, dtype, rng, seed):
    """From the same initial parameters (tol=0, 12 iterations), the lower bound after every
    iteration, the final parameters and every scoring method match scikit-learn."""
    X = make_data(rng, dtype=dtype)
    K = 4
    w, m, p = initial_parameters(rng, X, K, covariance_type)
    kw = dict(weights_init=w, means_init=m, precisions_init=p, max_iter=12, tol=0.0)
    ours, theirs = fit_both(X, K, covariance_type, sk_X=X.astype(np.float64), **kw)
    msg = f"seed={seed} covariance_type={covariance_type} dtype={dtype}"
    assert len(ours.lower_bounds_) == len(theirs.lower_bounds_) == 12, msg
    np.testing.assert_allclose(ours.lower_bounds_, theirs.lower_bounds_, rtol=LB_RTOL[dtype], err_msg=f"lower_bounds_; {msg}")
    np.testing.assert_allclose(ours.lower_bound_, theirs.lower_bound_, rtol=LB_RTOL[dtype], err_msg=msg)
    assert ours.n_iter_ == theirs.n_iter_ == 12 and ours.converged_ is False, msg
    assert_same_model(ours, theirs, X, dtype=dtype, msg=msg)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_lower_bound_after_max_iter_1_to_5_matches_sklearn(covariance_type, rng, seed):
    """lower_bound_ of separate fits stopped after 1..5 iterations (default tol)."""
    X = make_data(rng, n=200)
    w, m, p = initial_parameters(rng, X, 3, covariance_type)
    for max_iter in range(1, 6):
        ours, theirs = fit_both(X, 3, covariance_type, weights_init=w, means_init=m, precisions_init=p, max_iter=max_iter)
        msg = f"seed={seed} covariance_type={covariance_type} max_iter={max_iter}"
        np.testing.assert_allclose(ours.lower_bound_, theirs.lower_bound_, rtol=1e-6, err_msg=msg)
        assert (ours.n_iter_, ours.converged_) == (theirs.n_iter_, theirs.converged_), msg


@pytest.mark.parametrize("covariance_type", COV_TYPES)
@pytest.mark.parametrize("init_params", INIT_PARAMS)
def test_init_params_same_initial_model_as_sklearn(init_params, covariance_type, rng, seed):
    """The same random_state draws the same initial model as scikit-learn for every
    init_params (including scikit-learn's tied covariance of the one-point-per-component
    inits), so the whole run matches."""
    X = make_data(rng, n=240)
    state = int(rng.integers(2**31))
    ours, theirs = fit_both(X, 4, covariance_type, init_params=init_params, random_state=state, max_iter=6, tol=0.0)
    msg = f"seed={seed} init_params={init_params} covariance_type={covariance_type} random_state={state}"
    # The one-point inits start diag/spherical covariances at reg_covar, where scikit-learn's
    # E[x^2] - mu^2 loses ~eps * |x|^2 / reg_covar relative accuracy; genfast's scatter is centred.
    rtol = 1e-6 if init_params in ("kmeans", "random") or covariance_type in ("full", "tied") else 1e-5
    np.testing.assert_allclose(ours.lower_bounds_, theirs.lower_bounds_, rtol=rtol, err_msg=f"lower_bounds_; {msg}")
    np.testing.assert_allclose(ours.means_, theirs.means_, rtol=1e-6, atol=1e-6 * np.abs(X).max(), err_msg=msg)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
@pytest.mark.parametrize("init_params", ["kmeans", "random"])
def test_initial_responsibilities_in_pieces_match_sklearn(init_params, covariance_type, rng, seed, monkeypatch):
    """The initial (n_samples, n_components) responsibilities are formed a piece of rows at a
    time and the pieces' statistics pooled (Chan et al.): with pieces of 37 rows (7 of them,
    the last short) the initial model, and so the run, is still scikit-learn's."""
    from genfast import _mixture

    monkeypatch.setattr(_mixture, "_PIECE_BYTES", 37 * 4 * 8)  # 37 rows of K=4 (float64 draws)
    X = make_data(rng, n=240)
    state = int(rng.integers(2**31))
    ours, theirs = fit_both(X, 4, covariance_type, init_params=init_params, random_state=state, max_iter=6, tol=0.0)
    msg = f"seed={seed} init_params={init_params} covariance_type={covariance_type} random_state={state}"
    np.testing.assert_allclose(ours.lower_bounds_, theirs.lower_bounds_, rtol=1e-6, err_msg=f"lower_bounds_; {msg}")
    np.testing.assert_allclose(ours.means_, theirs.means_, rtol=1e-6, atol=1e-6 * np.abs(X).max(), err_msg=msg)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_n_init_best_run_and_convergence_match_sklearn(covariance_type, rng, seed):
    """Best of n_init by final lower bound, then default tol: the same run, n_iter_ and
    converged_ as scikit-learn. Uniform data: the runs end in different local optima (on
    clean blobs two runs may tie at the same optimum, and rounding would pick either)."""
    X = rng.uniform(-1.0, 1.0, size=(300, 3)) * rng.uniform(1.0, 3.0, size=3)
    state = int(rng.integers(2**31))
    ours, theirs = fit_both(X, 5, covariance_type, init_params="random", n_init=3, random_state=state)
    msg = f"seed={seed} covariance_type={covariance_type} random_state={state}"
    np.testing.assert_allclose(ours.lower_bound_, theirs.lower_bound_, rtol=1e-6, err_msg=msg)
    np.testing.assert_allclose(ours.lower_bounds_, theirs.lower_bounds_, rtol=1e-6, err_msg=msg)
    assert (ours.n_iter_, ours.converged_) == (theirs.n_iter_, theirs.converged_), msg
    assert_same_model(ours, theirs, X, dtype="float64", msg=msg)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_warm_start_matches_sklearn(covariance_type, rng, seed):
    """warm_start: the second fit continues from the first (one init, n_init ignored)."""
    X = make_data(rng, n=200)
    state = int(rng.integers(2**31))
    kw = dict(init_params="random", random_state=state, warm_start=True, max_iter=3, n_init=3, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = genfast.GaussianMixture(3, covariance_type=covariance_type, **kw)
        theirs = SKGaussianMixture(3, covariance_type=covariance_type, **kw)
        for step in range(2):
            ours.fit(X)
            theirs.fit(X)
            msg = f"seed={seed} covariance_type={covariance_type} fit #{step + 1}"
            np.testing.assert_allclose(ours.lower_bounds_, theirs.lower_bounds_, rtol=1e-6, err_msg=msg)
    assert_same_model(ours, theirs, X, dtype="float64", msg=msg)


def test_sample_matches_sklearn(rng, seed):
    """sample(n) draws with random_state exactly as scikit-learn: same labels, same points.

    scikit-learn samples from the fitted model given ours, since the fits agree only to
    rounding, and a component collapsed onto one point (covariance reg_covar I) has no unique
    eigenbasis: rounding then turns multivariate_normal's draws (seed 1652181390: 4e-6 apart)."""
    X = make_data(rng, n=200)
    state = int(rng.integers(2**31))
    for covariance_type in COV_TYPES:
        ours, theirs = fit_both(X, 3, covariance_type, random_state=state, init_params="random_from_data")
        msg = f"seed={seed} covariance_type={covariance_type}"
        np.testing.assert_allclose(ours.covariances_, theirs.covariances_, rtol=1e-6, atol=1e-9, err_msg=msg)
        theirs.weights_, theirs.means_, theirs.covariances_ = ours.weights_, ours.means_, ours.covariances_
        Xs, ys = ours.sample(57)
        Xt, yt = theirs.sample(57)
        assert Xs.shape == (57, 3) and Xs.dtype == np.float64 and ys.dtype == np.int64, msg
        np.testing.assert_array_equal(ys, yt, err_msg=msg)
        np.testing.assert_array_equal(Xs, Xt, err_msg=msg)


# =========================================================================== behaviour


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtype_preserved_and_methods_consistent(dtype, rng, seed):
    X = make_data(rng, dtype=dtype)
    gm = genfast.GaussianMixture(4, random_state=int(rng.integers(2**31)), max_iter=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        labels = gm.fit_predict(X)
    msg = f"seed={seed} dtype={dtype}"
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        assert getattr(gm, name).dtype == np.dtype(dtype), f"{name}; {msg}"
    np.testing.assert_array_equal(labels, gm.predict(X), err_msg=msg)
    ss = gm.score_samples(X)
    assert ss.dtype == np.dtype(dtype) and ss.shape == (len(X),), msg
    proba = gm.predict_proba(X)
    assert proba.dtype == np.dtype(dtype) and proba.shape == (len(X), 4), msg
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5 if dtype == "float32" else 1e-12, err_msg=msg)
    np.testing.assert_allclose(gm.score(X), np.mean(ss.astype(np.float64)), rtol=1e-12, err_msg=msg)
    # score_samples is the log-density of the fitted mixture (reference E-step in float64).
    ref_lp, ref_lr = reference.gmm_log_resp(X, gm.weights_, gm.means_, gm.precisions_cholesky_, "full")
    tol = 1e-4 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(ss, ref_lp, rtol=tol, atol=tol, err_msg=msg)
    np.testing.assert_allclose(proba, np.exp(ref_lr), atol=tol * 10, err_msg=msg)
    # lower_bound_ is the mean log-likelihood of the last E-step, lower_bounds_ its history.
    assert gm.lower_bound_ == gm.lower_bounds_[-1] and len(gm.lower_bounds_) == gm.n_iter_, msg


def test_integer_input_becomes_float64(rng, seed):
    X = np.round(make_data(rng) * 3).astype(np.int64)
    gm = genfast.GaussianMixture(2, random_state=0).fit(X)
    assert gm.means_.dtype == np.float64, f"seed={seed}"


def test_convergence_warning_once_with_change(rng, seed):
    """A fit whose best run did not converge warns once (whatever n_init) with the change of
    the lower bound it reached; a converged fit does not warn."""
    X = make_data(rng, n=200)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gm = genfast.GaussianMixture(3, max_iter=2, tol=0.0, n_init=3, init_params="random", random_state=0).fit(X)
    conv = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert len(conv) == 1, f"{len(conv)} ConvergenceWarnings; seed={seed}"
    change = gm.lower_bounds_[-1] - gm.lower_bounds_[-2]
    text = str(conv[0].message)
    assert "did not converge" in text and "changed by" in text and f"{change:.6g}" in text, text
    assert not gm.converged_
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        gm = genfast.GaussianMixture(3, max_iter=500, tol=1e-3, random_state=0).fit(X)
    assert gm.converged_ and abs(gm.lower_bounds_[-1] - gm.lower_bounds_[-2]) < 1e-3, f"seed={seed}"


def test_max_iter_0_only_initialises(rng, seed):
    X = make_data(rng, n=100)
    ours, theirs = fit_both(X, 3, "full", max_iter=0, random_state=1, init_params="random")
    assert ours.n_iter_ == 0 and not ours.converged_ and ours.lower_bound_ == -np.inf, f"seed={seed}"
    assert_same_model(ours, theirs, X, dtype="float64", msg=f"seed={seed}")


def test_fit_predict_matches_fit_then_predict(rng, seed):
    """Even when stopped early, fit_predict's labels are those of the returned model."""
    X = make_data(rng, n=250, centers=5)
    for max_iter in (1, 2, 100):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            a = genfast.GaussianMixture(5, max_iter=max_iter, random_state=3, init_params="random").fit_predict(X)
            b = genfast.GaussianMixture(5, max_iter=max_iter, random_state=3, init_params="random").fit(X).predict(X)
        np.testing.assert_array_equal(a, b, err_msg=f"seed={seed} max_iter={max_iter}")


def test_verbose_output(rng, capsys):
    X = make_data(rng, n=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        genfast.GaussianMixture(2, verbose=2, verbose_interval=1, max_iter=3, tol=0.0, random_state=0).fit(X)
    out = capsys.readouterr().out
    assert "Initialization 0" in out and "Iteration 3" in out and "ll change" in out and "lower bound" in out, out


# =========================================================================== degenerate components


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_component_that_loses_all_points(covariance_type, dtype, rng, seed):
    """A component far from every point gets exactly zero responsibility: as in scikit-learn
    (N_k + 10 eps) it gets mean 0, covariance reg_covar and a ~0 weight, finite everywhere, and
    the fit (lower bound every iteration) still matches scikit-learn."""
    X = make_data(rng, n=300, d=3, centers=3, dtype=dtype, offset=50.0)
    K = 4
    w, m, p = initial_parameters(rng, X, K, covariance_type)
    m[2] = X.max(axis=0).astype(np.float64) + 1e4  # no point comes near component 2
    ours, theirs = fit_both(X, K, covariance_type, sk_X=X.astype(np.float64), weights_init=w, means_init=m,
                            precisions_init=p, max_iter=5, tol=0.0)
    msg = f"seed={seed} covariance_type={covariance_type} dtype={dtype}"
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_"):
        assert np.isfinite(getattr(ours, name)).all(), f"{name} not finite; {msg}"
    assert ours.weights_[2] < 1e-12, msg
    np.testing.assert_allclose(ours.means_[2], 0.0, atol=1e-6, err_msg=msg)
    if covariance_type == "full":
        np.testing.assert_allclose(ours.covariances_[2], 1e-6 * np.eye(3), rtol=1e-5, err_msg=msg)
    elif covariance_type in ("diag", "spherical"):
        np.testing.assert_allclose(ours.covariances_[2], 1e-6, rtol=1e-5, err_msg=msg)
    proba = ours.predict_proba(X)
    assert np.isfinite(proba).all() and np.isfinite(ours.score_samples(X)).all(), msg
    assert not (ours.predict(X) == 2).any(), msg
    np.testing.assert_allclose(ours.lower_bounds_, theirs.lower_bounds_, rtol=LB_RTOL[dtype], err_msg=msg)


def _collapsed_data(covariance_type):
    """Data and an initial model whose component 1 collapses onto 40 copies of one point.

    N_k = 40 makes N_k + 10 eps == N_k in float64 and the copies sit at the origin, so the
    mean is exactly the point and the scatter exactly 0."""
    rng = np.random.default_rng(0)
    blob = rng.standard_normal((60, 3)) + 100.0
    if covariance_type == "tied":  # the tied scatter sums over components: collapse both
        blob = np.full((40, 3), 100.0)
    X = np.vstack([blob, np.zeros((40, 3))])
    init = dict(weights_init=[0.5, 0.5], means_init=[[100.0] * 3, [0.0] * 3],
                precisions_init={"full": np.stack([np.eye(3)] * 2), "tied": np.eye(3),
                                 "diag": np.ones((2, 3)), "spherical": np.ones(2)}[covariance_type])
    return X, init


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_not_positive_definite_names_component_and_reg_covar(covariance_type, dtype):
    X, init = _collapsed_data(covariance_type)
    where = "tied covariance" if covariance_type == "tied" else "component 1"
    with pytest.raises(ValueError, match=rf"(?s){where}.*not positive definite.*larger reg_covar"):
        genfast.GaussianMixture(2, covariance_type=covariance_type, reg_covar=0.0, **init).fit(X.astype(dtype))
    # The default reg_covar keeps the collapsed component usable (covariance reg_covar).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm = genfast.GaussianMixture(2, covariance_type=covariance_type, max_iter=3, **init).fit(X.astype(dtype))
    assert np.isfinite(gm.precisions_cholesky_).all()


# =========================================================================== torch


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_cpu_matches_numpy(dtype, rng, seed):
    """A torch CPU tensor fits bitwise like the same numpy array; methods return tensors."""
    torch = pytest.importorskip("torch")
    X = make_data(rng, n=200, dtype=dtype)
    tX = torch.from_numpy(X)
    state = int(rng.integers(2**31))
    a = genfast.GaussianMixture(3, random_state=state).fit(tX)
    b = genfast.GaussianMixture(3, random_state=state).fit(X)
    msg = f"seed={seed} dtype={dtype}"
    assert a.lower_bounds_ == b.lower_bounds_, msg
    np.testing.assert_array_equal(a.means_, b.means_, err_msg=msg)
    labels = a.predict(tX)
    assert isinstance(labels, torch.Tensor) and labels.dtype == torch.int64, msg
    np.testing.assert_array_equal(labels.numpy(), b.predict(X), err_msg=msg)
    for method in ("score_samples", "predict_proba"):
        out = getattr(a, method)(tX)
        assert isinstance(out, torch.Tensor) and out.dtype == getattr(torch, dtype), f"{method}; {msg}"
        np.testing.assert_array_equal(out.numpy(), getattr(b, method)(X), err_msg=f"{method}; {msg}")
    fp = genfast.GaussianMixture(3, random_state=state).fit_predict(tX)
    assert isinstance(fp, torch.Tensor), msg
    np.testing.assert_array_equal(fp.numpy(), b.predict(X), err_msg=msg)
    assert a.score(tX) == b.score(X), msg


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_cuda_matches_cpu(covariance_type, dtype, rng, seed):
    """From the same initial parameters, EM on the GPU (numpy X moved by device='cuda', and a
    CUDA tensor X) follows the CPU run iteration by iteration."""
    torch = pytest.importorskip("torch")
    X = make_data(rng, n=300, dtype=dtype)
    w, m, p = initial_parameters(rng, X, 4, covariance_type)
    kw = dict(covariance_type=covariance_type, weights_init=w, means_init=m, precisions_init=p, max_iter=8,
              tol=0.0)
    cpu = genfast.GaussianMixture(4, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        cpu.fit(X)
        gpu = genfast.GaussianMixture(4, device="cuda", **kw).fit(X)
        on_device = genfast.GaussianMixture(4, **kw).fit(torch.from_numpy(X).cuda())
    msg = f"seed={seed} dtype={dtype} covariance_type={covariance_type}"
    for other in (gpu, on_device):
        np.testing.assert_allclose(other.lower_bounds_, cpu.lower_bounds_, rtol=LB_RTOL[dtype], err_msg=msg)
        np.testing.assert_allclose(other.means_, cpu.means_, rtol=1e-4, atol=1e-4 * np.abs(X).max(), err_msg=msg)
    assert isinstance(gpu.predict(X), np.ndarray), msg
    labels = on_device.predict(torch.from_numpy(X).cuda())
    assert isinstance(labels, torch.Tensor) and labels.device.type == "cuda", msg


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_gaussian_cuda_matches_cpu(covariance_type, dtype, rng, seed):
    torch = pytest.importorskip("torch")
    X = make_data(rng, n=500, dtype=dtype, offset=100.0)
    cpu = genfast.Gaussian(covariance_type).fit(X)
    msg = f"seed={seed} dtype={dtype} covariance_type={covariance_type}"
    tol = PARAM_RTOL[dtype]
    for gpu in (genfast.Gaussian(covariance_type, device="cuda").fit(X),
                genfast.Gaussian(covariance_type).fit(torch.from_numpy(X).cuda())):
        np.testing.assert_allclose(gpu.mean_, cpu.mean_, rtol=tol, err_msg=msg)
        np.testing.assert_allclose(gpu.covariance_, cpu.covariance_, rtol=tol, atol=tol * np.abs(cpu.covariance_).max(),
                                   err_msg=msg)
        np.testing.assert_allclose(gpu.score_samples(X), cpu.score_samples(X), rtol=LB_RTOL[dtype],
                                   err_msg=msg)


# =========================================================================== bad inputs


def _X():
    return np.random.default_rng(0).standard_normal((20, 3))


_PD_FAIL = np.stack([np.eye(3), np.diag([1.0, -1.0, 1.0])])
BAD_PARAMS = {
    "n_components_0": (dict(n_components=0), ValueError, r"\bn_components\b"),
    "n_components_float": (dict(n_components=2.0), TypeError, r"\bn_components\b"),
    "n_components_gt_n_samples": (dict(n_components=21), ValueError, r"n_components=21 must be <= n_samples=20"),
    "covariance_type": (dict(covariance_type="banded"), ValueError, r"\bcovariance_type\b"),
    "reg_covar_negative": (dict(reg_covar=-1e-3), ValueError, r"\breg_covar\b"),
    "reg_covar_nan": (dict(reg_covar=float("nan")), ValueError, r"\breg_covar\b"),
    "tol_negative": (dict(tol=-1.0), ValueError, r"\btol\b"),
    "max_iter_negative": (dict(max_iter=-1), ValueError, r"\bmax_iter\b"),
    "n_init_0": (dict(n_init=0), ValueError, r"\bn_init\b"),
    "init_params": (dict(init_params="kmeans||"), ValueError, r"\binit_params\b"),
    "verbose_interval_0": (dict(verbose_interval=0), ValueError, r"\bverbose_interval\b"),
    "warm_start_str": (dict(warm_start="yes"), TypeError, r"\bwarm_start\b"),
    "device": (dict(device="tpu"), ValueError, r"\bdevice\b"),
    "random_state": (dict(random_state="seed"), ValueError, r"\brandom_state\b"),
    "weights_init_shape": (dict(n_components=2, weights_init=[0.2, 0.3, 0.5]), ValueError, r"\bweights_init\b"),
    "weights_init_negative": (dict(n_components=2, weights_init=[-0.5, 1.5]), ValueError, r"\bweights_init\b"),
    "weights_init_not_normalised": (dict(n_components=2, weights_init=[0.5, 0.6]), ValueError, r"\bweights_init\b"),
    "weights_init_nan": (dict(n_components=2, weights_init=[np.nan, 0.5]), ValueError, r"\bweights_init\b"),
    "means_init_shape": (dict(n_components=2, means_init=np.zeros((2, 2))), ValueError, r"\bmeans_init\b"),
    "means_init_inf": (dict(n_components=2, means_init=np.full((2, 3), np.inf)), ValueError, r"\bmeans_init\b"),
    "precisions_init_shape_full": (dict(n_components=2, precisions_init=np.ones((2, 3))), ValueError,
                                   r"\bprecisions_init\b"),
    "precisions_init_shape_diag": (dict(n_components=2, covariance_type="diag", precisions_init=np.ones(2)),
                                   ValueError, r"\bprecisions_init\b"),
    "precisions_init_shape_tied": (dict(n_components=2, covariance_type="tied", precisions_init=np.ones((2, 3, 3))),
                                   ValueError, r"\bprecisions_init\b"),
    "precisions_init_not_pd_full": (dict(n_components=2, precisions_init=_PD_FAIL), ValueError,
                                    r"precisions_init: component 1 .*not positive definite"),
    "precisions_init_not_symmetric": (dict(n_components=1, covariance_type="tied",
                                           precisions_init=np.array([[1, 0.5, 0], [0, 1, 0], [0, 0, 1.0]])),
                                      ValueError, r"precisions_init.*not symmetric"),
    "precisions_init_not_pd_tied": (dict(n_components=2, covariance_type="tied", precisions_init=-np.eye(3)),
                                    ValueError, r"precisions_init.*not positive definite"),
    "precisions_init_negative_diag": (dict(n_components=2, covariance_type="diag",
                                           precisions_init=np.array([[1.0, 1, 1], [1, 0, 1]])),
                                      ValueError, r"precisions_init.*component 1"),
    "precisions_init_negative_spherical": (dict(n_components=2, covariance_type="spherical",
                                                precisions_init=np.array([1.0, -2.0])),
                                           ValueError, r"precisions_init.*component 1"),
}


@pytest.mark.parametrize("case", BAD_PARAMS.values(), ids=BAD_PARAMS.keys())
def test_bad_params_rejected(case):
    params, exc, match = case
    with pytest.raises(exc, match=match):
        genfast.GaussianMixture(**params).fit(_X())


def test_params_never_modified(rng):
    """fit validates copies: the constructor parameters stay the objects the user passed."""
    w, m, p = [0.5, 0.5], [[0.0] * 3, [1.0] * 3], np.stack([np.eye(3)] * 2)
    gm = genfast.GaussianMixture(2, weights_init=w, means_init=m, precisions_init=p, max_iter=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(_X())
    assert gm.weights_init is w and gm.means_init is m and gm.precisions_init is p
    np.testing.assert_array_equal(p, np.stack([np.eye(3)] * 2))


def test_device_cuda_without_usable_cuda_is_rejected():
    usable, _ = genfast._backend.cuda_status()
    if usable:
        pytest.skip("CUDA is usable here; see test_cuda_matches_cpu")
    with pytest.raises(ValueError, match=r"\bdevice\b"):
        genfast.GaussianMixture(2, device="cuda").fit(_X())
    with pytest.raises(ValueError, match=r"\bdevice\b"):
        genfast.Gaussian(device="cuda").fit(_X())


def _with(value, where):
    def make(X):
        X = X.copy()
        X[where] = value
        return X
    return make


BAD_X = {
    "nan": (_with(np.nan, (3, 1)), ValueError, r"\bX\b"),
    "inf": (_with(np.inf, (0, 2)), ValueError, r"\bX\b"),
    "1d": (lambda X: X[:, 0], ValueError, r"\bX\b"),
    "3d": (lambda X: X[None], ValueError, r"\bX\b"),
    "empty": (lambda X: X[:0], ValueError, r"\bX\b"),
    "no_features": (lambda X: X[:, :0], ValueError, r"\bX\b"),
    "strings": (lambda X: np.array([["a", "b", "c"]] * 20), (TypeError, ValueError), r"\bX\b"),
    "complex": (lambda X: X.astype(complex), (TypeError, ValueError), r"\bX\b"),
}


@pytest.mark.parametrize("case", BAD_X.values(), ids=BAD_X.keys())
def test_bad_X_rejected(case):
    make, exc, match = case
    X = make(_X())
    for est in (genfast.GaussianMixture(2), genfast.Gaussian()):
        with pytest.raises(exc, match=match):
            est.fit(X)
    fitted = [genfast.GaussianMixture(2, random_state=0).fit(_X()), genfast.Gaussian().fit(_X())]
    for est in fitted:
        methods = [est.score_samples, est.score]
        if isinstance(est, genfast.GaussianMixture):
            methods += [est.predict, est.predict_proba, est.bic, est.aic]
        for method in methods:
            with pytest.raises(exc, match=match):
                method(X)


def test_one_sample_rejected():
    with pytest.raises(ValueError, match=r"X.*1 sample"):
        genfast.GaussianMixture(1).fit(_X()[:1])


def test_predict_checks_fitted_and_features():
    X = _X()
    for est in (genfast.GaussianMixture(2), genfast.Gaussian()):
        with pytest.raises(NotFittedError):
            est.score_samples(X)
        with pytest.raises(NotFittedError):
            est.sample(3)
    gm = genfast.GaussianMixture(2, random_state=0).fit(X)
    for method in (gm.predict, gm.predict_proba, gm.score_samples, gm.score):
        with pytest.raises(ValueError, match="features"):
            method(X[:, :2])
    with pytest.raises(ValueError, match=r"\bn_samples\b"):
        gm.sample(0)


# =========================================================================== Gaussian


def _full_cov(cov, covariance_type, d):
    if covariance_type in ("full", "tied"):
        return cov
    if covariance_type == "diag":
        return np.diag(cov)
    return cov * np.eye(d)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_gaussian_matches_reference_and_scipy(covariance_type, dtype, rng, seed):
    d = int(rng.integers(1, 6))
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    A = Q * rng.uniform(0.5, 2.0, size=d)  # covariance condition number <= 16
    X = (rng.standard_normal((int(rng.integers(d + 5, 400)), d)) @ A + rng.normal(0, 10, size=d)).astype(dtype)
    g = genfast.Gaussian(covariance_type).fit(X)
    mean, cov = reference.gaussian_mle(X, covariance_type)
    msg = f"seed={seed} covariance_type={covariance_type} dtype={dtype} X{X.shape}"
    tol = 1e-4 if dtype == "float32" else 1e-10
    assert g.mean_.dtype == np.dtype(dtype) and np.asarray(g.covariance_).dtype == np.dtype(dtype), msg
    np.testing.assert_allclose(g.mean_, mean, rtol=tol, atol=tol * np.abs(X).max(), err_msg=f"mean_; {msg}")
    np.testing.assert_allclose(g.covariance_, cov, rtol=tol, atol=tol * np.abs(cov).max(), err_msg=f"covariance_; {msg}")
    assert np.shape(g.covariance_) == np.shape(cov) and np.shape(g.precision_cholesky_) == np.shape(cov), msg
    P = np.asarray(g.precision_cholesky_, dtype=np.float64)
    if covariance_type in ("full", "tied"):
        np.testing.assert_array_equal(np.tril(P, -1), 0.0, err_msg=f"precision_cholesky_ upper triangular; {msg}")
        np.testing.assert_allclose(P, reference.precisions_cholesky_from_covariances(cov, "tied"), rtol=tol * 100,
                                   atol=tol * 100 * np.abs(P).max(), err_msg=f"precision_cholesky_; {msg}")
    else:
        np.testing.assert_allclose(P, 1 / np.sqrt(cov), rtol=tol, err_msg=msg)
    Xnew = (X[rng.integers(0, len(X), size=50)].astype(np.float64) + rng.standard_normal((50, d))).astype(dtype)
    expected = multivariate_normal(mean, _full_cov(cov, covariance_type, d)).logpdf(Xnew.astype(np.float64))
    ss = g.score_samples(Xnew)
    assert ss.dtype == np.dtype(dtype) and ss.shape == (50,), msg
    np.testing.assert_allclose(ss, np.atleast_1d(expected), rtol=tol, atol=tol * 10, err_msg=f"score_samples; {msg}")
    np.testing.assert_allclose(g.score(Xnew), np.mean(expected), rtol=tol, atol=tol, err_msg=msg)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_gaussian_sample_weight_equals_repeated_rows(covariance_type, rng, seed):
    X = rng.standard_normal((60, 3)) * [1.0, 2.0, 0.5]
    sw = rng.integers(0, 4, size=60)
    sw[0] = 1
    a = genfast.Gaussian(covariance_type).fit(X, sample_weight=sw)
    b = genfast.Gaussian(covariance_type).fit(np.repeat(X, sw, axis=0))
    msg = f"seed={seed} covariance_type={covariance_type}"
    np.testing.assert_allclose(a.mean_, b.mean_, rtol=1e-12, atol=1e-14, err_msg=msg)
    np.testing.assert_allclose(a.covariance_, b.covariance_, rtol=1e-12, atol=1e-14, err_msg=msg)
    # Scaling the weights changes nothing, however small they are.
    c = genfast.Gaussian(covariance_type).fit(X, sample_weight=sw * 1e-30)
    np.testing.assert_allclose(c.covariance_, b.covariance_, rtol=1e-12, atol=1e-14, err_msg=msg)


def test_gaussian_reg_covar_and_singular_data(rng, seed):
    """A constant feature (whose sums, and so mean, are exact) has variance exactly 0, so
    reg_covar=0 raises the not-positive-definite error naming reg_covar; reg_covar fixes it."""
    X = rng.standard_normal((int(rng.integers(2, 60)), 3))
    X[:, 1] = 0.25 * int(rng.integers(-1000, 1000))  # its sums are exact, so is its mean
    for covariance_type in ("full", "tied", "diag"):
        with pytest.raises(ValueError, match=r"(?s)covariance of X.*not positive definite.*larger reg_covar"):
            genfast.Gaussian(covariance_type).fit(X)
    with pytest.raises(ValueError, match="reg_covar"):
        genfast.Gaussian("spherical").fit(np.tile([[1.5, -2.25, 4.0]], (5, 1)))  # one point, 5 times
    g = genfast.Gaussian(reg_covar=1e-3).fit(X)
    _, cov = reference.gaussian_mle(X)
    np.testing.assert_allclose(g.covariance_, cov + 1e-3 * np.eye(3), rtol=1e-10, atol=1e-12, err_msg=f"seed={seed}")
    assert g.covariance_[1, 1] == 1e-3, f"seed={seed}"
    with pytest.raises(ValueError, match=r"n_samples=1"):
        genfast.Gaussian().fit(X[:1])
    g1 = genfast.Gaussian("spherical", reg_covar=0.5).fit(X[:1])
    np.testing.assert_allclose(g1.covariance_, 0.5, err_msg=f"seed={seed}")


def test_gaussian_bad_inputs():
    X = _X()
    with pytest.raises(ValueError, match=r"\bcovariance_type\b"):
        genfast.Gaussian("banded").fit(X)
    with pytest.raises(ValueError, match=r"\breg_covar\b"):
        genfast.Gaussian(reg_covar=-1.0).fit(X)
    with pytest.raises(ValueError, match=r"\bdevice\b"):
        genfast.Gaussian(device="tpu").fit(X)
    for sw, match in ((-np.ones(20), r"\bsample_weight\b"), (np.ones(19), r"\bsample_weight\b"),
                      (np.zeros(20), r"\bsample_weight\b"), (np.full(20, np.nan), r"\bsample_weight\b")):
        with pytest.raises(ValueError, match=match):
            genfast.Gaussian().fit(X, sample_weight=sw)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_gaussian_sample(covariance_type, rng, seed):
    X = rng.standard_normal((500, 3)) @ np.array([[2.0, 0.5, 0], [0, 1, 0.3], [0, 0, 0.5]]) + 5.0
    g = genfast.Gaussian(covariance_type).fit(X)
    S = g.sample(20_000, random_state=int(rng.integers(2**31)))
    msg = f"seed={seed} covariance_type={covariance_type}"
    assert S.shape == (20_000, 3) and S.dtype == np.float64, msg
    np.testing.assert_allclose(S.mean(axis=0), g.mean_, atol=0.1, err_msg=msg)
    _, cov = reference.gaussian_mle(S, covariance_type)
    np.testing.assert_allclose(cov, g.covariance_, rtol=0.1, atol=0.05, err_msg=msg)
    np.testing.assert_array_equal(g.sample(5, random_state=3), g.sample(5, random_state=3), err_msg=msg)


def test_gaussian_torch_cpu(rng, seed):
    torch = pytest.importorskip("torch")
    X = rng.standard_normal((100, 4)).astype(np.float32)
    a = genfast.Gaussian().fit(torch.from_numpy(X))
    b = genfast.Gaussian().fit(X)
    np.testing.assert_array_equal(a.covariance_, b.covariance_, err_msg=f"seed={seed}")
    out = a.score_samples(torch.from_numpy(X))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), b.score_samples(X), err_msg=f"seed={seed}")


def test_gaussian_is_one_component_mixture(rng, seed):
    """Gaussian(reg_covar=r) is GaussianMixture(1, reg_covar=r) after one EM step."""
    X = make_data(rng, n=200)
    for covariance_type in COV_TYPES:
        g = genfast.Gaussian(covariance_type, reg_covar=1e-6).fit(X)
        with pytest.warns(ConvergenceWarning, match="changed by inf"):  # the first change is from -inf
            gm = genfast.GaussianMixture(1, covariance_type=covariance_type, max_iter=1).fit(X)
        msg = f"seed={seed} covariance_type={covariance_type}"
        np.testing.assert_allclose(g.mean_, gm.means_[0], rtol=1e-12, atol=1e-12, err_msg=msg)
        cov = gm.covariances_ if covariance_type == "tied" else gm.covariances_[0]
        np.testing.assert_allclose(g.covariance_, cov, rtol=1e-10, err_msg=msg)
        np.testing.assert_allclose(g.score_samples(X), gm.score_samples(X), rtol=1e-10, err_msg=msg)


# =========================================================================== scikit-learn checks

# scikit-learn lists no expected failure for its own GaussianMixture in
# sklearn/utils/_test_common/instance_generator.py PER_ESTIMATOR_XFAIL_CHECKS (only the
# array-API check check_array_api_mixed_inputs, which check_estimator does not run here), so
# none are declared. GaussianMixture(n_init=2, max_iter=5) is the instance scikit-learn tests
# (INIT_PARAMS in the same file). Gaussian's default reg_covar=0 is the exact maximum-likelihood
# estimate, which does not exist for check_sample_weight_equivalence_on_dense_data's 15 x 30
# data (a singular covariance raises the not-positive-definite error), so the full-covariance
# instance is checked with reg_covar=1e-6 and the diagonal one with the default.
@parametrize_with_checks([genfast.GaussianMixture(n_init=2, max_iter=5), genfast.Gaussian(reg_covar=1e-6),
                          genfast.Gaussian("diag")])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical"])
def test_gaussian_float32_statistics_beyond_float32_range(covariance_type):
    """Found by the property tests: the M-step statistics come back in X's dtype, and
    Gaussian scales the weights to sum >= 32, so one float32 point at 1e38 gave mean_ inf.
    Such data is now summed in float64; the fitted attributes stay float32."""
    X = np.array([[1e38, -1.0]], np.float32)
    g = genfast.Gaussian(covariance_type, reg_covar=1e-6).fit(X)
    assert g.mean_.dtype == np.float32
    np.testing.assert_array_equal(g.mean_, X[0])
    assert np.isfinite(g.covariance_).all()
    X2 = np.array([[3e38, 1.0], [1e38, -1.0]], np.float32)
    g = genfast.Gaussian(covariance_type, reg_covar=1e-6).fit(X2)
    np.testing.assert_allclose(g.mean_, X2.astype(np.float64).mean(0), rtol=1e-6)
