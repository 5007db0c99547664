"""genfast.ops.gmm_log_resp / gmm_suff_stats / gmm_em_step against genfast.reference on fresh inputs."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from genfast import _core, ops, reference

COVARIANCE_TYPES = reference.COVARIANCE_TYPES
DTYPES = ["float32", "float64"]
# (N, K, D): single point / component / feature, K = N, sizes off every SIMD tile (a tile is
# 4 vectors of 8 float64 or 16 float32 points) and off the 8192-point summation blocks.
SHAPES = {
    "N1_K1_D1": (1, 1, 1),
    "N1": (1, 4, 3),
    "K1": (70, 1, 5),
    "K=N": (9, 9, 2),
    "D1": (130, 3, 1),
    "odd": (257, 7, 13),
    "tile+1": (65, 5, 4),
    "two_blocks": (8193, 3, 3),
}
RTOL = {"float32": 2e-5, "float64": 1e-12}


def random_mixture(rng, K, D, covariance_type):
    """Valid parameters: Dirichlet weights, means near the data, well-conditioned factors."""
    weights = rng.dirichlet(np.ones(K))
    means = rng.normal(size=(K, D))

    def factor():  # upper triangular, positive diagonal
        return np.triu(rng.normal(scale=0.3, size=(D, D)), 1) + np.diag(rng.uniform(0.5, 2.0, D))

    prec = {
        "full": lambda: np.stack([factor() for _ in range(K)]),
        "tied": factor,
        "diag": lambda: rng.uniform(0.5, 2.0, (K, D)),
        "spherical": lambda: rng.uniform(0.5, 2.0, K),
    }[covariance_type]()
    return weights, means, prec


def scatter_shape(covariance_type, K, D):
    return {"full": (K, D, D), "tied": (D, D), "diag": (K, D), "spherical": (K,)}[covariance_type]


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(b)))) if b.size else 0.0


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernels_match_reference_and_write_every_output(rng, seed, shape, covariance_type, dtype):
    N, K, D = shape
    weights, means, prec = (a.astype(dtype) for a in random_mixture(rng, K, D, covariance_type))
    X = rng.normal(scale=1.5, size=(N, D)).astype(dtype)
    # Outputs poisoned with NaN: any element the kernel does not write fails the comparison.
    log_prob = np.full(N, np.nan, dtype)
    log_resp = np.full((N, K), np.nan, dtype)
    _core.gmm_log_resp(X, weights, means, prec, covariance_type, log_prob, log_resp)
    ref_lp, ref_lr = reference.gmm_log_resp(X, weights, means, prec, covariance_type)
    assert rel_err(log_prob, ref_lp) < RTOL[dtype], f"seed={seed}"
    assert np.max(np.abs(log_resp - ref_lr)) < 1e4 * RTOL[dtype], f"seed={seed}"

    resp = np.exp(ref_lr).astype(dtype)
    nk, sums = np.full(K, np.nan, dtype), np.full((K, D), np.nan, dtype)
    scatter = np.full(scatter_shape(covariance_type, K, D), np.nan, dtype)
    _core.gmm_suff_stats(X, resp, False, covariance_type, nk, sums, scatter)
    ref = reference.gmm_suff_stats(X, resp, covariance_type)
    for name, got, want in zip(("nk", "sums", "scatter"), (nk, sums, scatter), ref):
        assert rel_err(got, want) < RTOL[dtype], f"{name} seed={seed}"


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_em_step_matches_reference_and_writes_every_output(rng, seed, shape, covariance_type, dtype):
    N, K, D = shape
    weights, means, prec = (a.astype(dtype) for a in random_mixture(rng, K, D, covariance_type))
    X = rng.normal(scale=1.5, size=(N, D)).astype(dtype)
    outputs = [np.full(N, np.nan, dtype), np.full(K, np.nan, dtype), np.full((K, D), np.nan, dtype),
               np.full(scatter_shape(covariance_type, K, D), np.nan, dtype)]
    _core.gmm_em_step(X, weights, means, prec, covariance_type, *outputs)
    want = reference.gmm_em_step(X, weights, means, prec, covariance_type)
    for name, got, ref in zip(("log_prob", "nk", "sums", "scatter"), outputs, want):
        assert rel_err(got, ref) < RTOL[dtype], f"{name} seed={seed}"


@pytest.mark.parametrize("far", [False, True])
@pytest.mark.parametrize("K", [40, 1024, 1025])
@pytest.mark.parametrize("dtype", DTYPES)
def test_tied_em_step_with_many_components(rng, seed, K, dtype, far):
    # The fused tied M-step sums about one centre unless that cancels (far: half the components
    # and their points 1e4 standard deviations away), then about each point's most responsible
    # component with K x K between-means weights, expanded 256 pairs at a time (40 overlapping
    # components give 1560 nonzero pairs), and past 1024 components each component's scatter
    # about its own mean. float64's 1e-12 tolerance fails if the shared centre were kept.
    N, D = 700, 3
    weights, means, prec = random_mixture(rng, K, D, "tied")
    X = rng.normal(scale=1.5, size=(N, D))
    if far:
        means[K // 2:] += 1e4
        X[N // 2:] += 1e4
    weights, means, prec, X = (a.astype(dtype) for a in (weights, means, prec, X))
    outputs = [np.full(N, np.nan, dtype), np.full(K, np.nan, dtype), np.full((K, D), np.nan, dtype),
               np.full((D, D), np.nan, dtype)]
    _core.gmm_em_step(X, weights, means, 0.3 * prec, "tied", *outputs)
    want = reference.gmm_em_step(X, weights, means, 0.3 * prec, "tied")
    for name, got, ref in zip(("log_prob", "nk", "sums", "scatter"), outputs, want):
        assert rel_err(got, ref) < RTOL[dtype], f"{name} seed={seed}"


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_em_step_in_pieces_matches_the_fused_step(rng, seed, covariance_type, dtype, kind):
    # CUDA has no fused EM kernel: gmm_em_step runs gmm_log_resp + gmm_suff_stats a piece of
    # rows at a time and pools the pieces' statistics exactly (Chan et al.), so the (N, K)
    # log-responsibilities never exist at once. The same path on CPU inputs, in pieces of 37
    # rows (the last short), must give the fused kernel's results; every output is written.
    if kind == "torch":
        torch = pytest.importorskip("torch")
    N, K, D = 300, 5, 3
    weights, means, prec = (a.astype(dtype) for a in random_mixture(rng, K, D, covariance_type))
    X = (rng.normal(scale=1.5, size=(N, D)) + 20.0).astype(dtype)  # off the origin: the pooling moves
    means = means + np.asarray(20.0, dtype)
    args = (X, weights, means, prec)
    if kind == "torch":
        args = tuple(torch.from_numpy(a) for a in args)
    checked = ops._mixture(*args, covariance_type, True)
    K_bytes = K * np.dtype(dtype).itemsize
    got = ops._em_step_in_pieces(*checked, piece_bytes=37 * K_bytes)
    whole = ops._em_step_in_pieces(*checked, piece_bytes=N * K_bytes)
    fused = ops.gmm_em_step(X, weights, means, prec, covariance_type)
    for name, a, b, c in zip(("log_prob", "nk", "sums", "scatter"), got, whole, fused):
        assert type(a) is type(args[0]) and str(a.dtype).endswith(dtype), name
        a, b = (np.asarray(v) for v in (a, b))
        assert np.isfinite(a).all() and a.shape == c.shape, f"{name} seed={seed}"
        assert rel_err(a, c) < RTOL[dtype] and rel_err(a, b) < RTOL[dtype], f"{name} seed={seed}"


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_em_step_scatter_is_moved_exactly_from_far_means(rng, seed, covariance_type):
    # The scatter is summed about the given means and moved to the new ones: the move must be
    # exact however far apart they are (here 10 standard deviations, and the data at 1e4).
    X = 1e4 + rng.normal(size=(3000, 3))
    weights, _, prec = random_mixture(rng, 4, 3, covariance_type)
    means = 1e4 + 10 * rng.normal(size=(4, 3))
    got = ops.gmm_em_step(X, weights, means, 0.1 * prec, covariance_type)
    want = reference.gmm_em_step(X, weights, means, 0.1 * prec, covariance_type)
    for name, a, b in zip(("log_prob", "nk", "sums", "scatter"), got, want):
        assert rel_err(a, b) < 1e-9, f"{name} seed={seed}"
    X32 = (1e4 + 0.01 * rng.normal(size=(20_000, 3))).astype(np.float32)
    _, _, _, scatter = ops.gmm_em_step(X32, weights, X32[:4], 10 * prec, covariance_type)
    variances = np.diagonal(scatter, axis1=-2, axis2=-1) if covariance_type in ("full", "tied") else scatter
    assert np.all(variances > 0), f"seed={seed}"


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_em_step_with_means_far_from_their_points(rng, seed, covariance_type, dtype):
    """Found by the property tests: float32 means 1e19 away from their points summed the
    tiles' squares about them to +inf (and the data's own spread was lost below their
    rounding). A mean that moves far from its shift is now summed about again, at its new
    place, so the statistics match the reference (float64: means 1e12 away)."""
    offset = 1e19 if dtype == "float32" else 1e12
    X = rng.normal(size=(57, 4))
    weights, means, prec = random_mixture(rng, 2, 4, covariance_type)
    means = means + offset * np.array([[1, -1, 0.5, 0.25], [-0.5, 1, 1, -1]])
    weights, means, prec, X = (a.astype(dtype) for a in (weights, means, prec, X))
    prec = prec / offset  # Mahalanobis terms of order 1: responsibilities not all 0 and 1
    got = ops.gmm_em_step(X, weights, means, prec, covariance_type)
    want = reference.gmm_em_step(X, weights, means, prec, covariance_type)
    for name, a, b in zip(("log_prob", "nk", "sums", "scatter"), got, want):
        assert np.isfinite(a).all() and rel_err(a, b) < RTOL[dtype], f"{name} seed={seed}"


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_float32_log_likelihood_far_from_origin(rng, seed, covariance_type):
    # Data and means at 1e4 with unit spread, and one mean 1e4 further away: the Mahalanobis
    # terms must be formed from differences at the scale of the spread (tied whitens each
    # tile about one of its points, never about something the far mean can pull away).
    X = (1e4 + rng.normal(size=(2000, 4))).astype(np.float32)
    weights, _, prec = (a.astype(np.float32) for a in random_mixture(rng, 5, 4, covariance_type))
    means = X[:5].copy()
    means[4] += 1e4
    got = ops.gmm_em_step(X, weights, means, prec, covariance_type)
    want = reference.gmm_em_step(X, weights, means, prec, covariance_type)
    for name, a, b in zip(("log_prob", "nk", "sums", "scatter"), got, want):
        assert rel_err(a, b) < 1e-4, f"{name} seed={seed}"


def test_em_step_with_zero_probability_gives_zero_statistics_never_nan(rng, seed):
    weights, means, prec = random_mixture(rng, 3, 2, "full")
    X = rng.normal(size=(40, 2))
    log_prob, nk, sums, scatter = ops.gmm_em_step(X, np.zeros(3), means, prec, "full")
    assert np.all(log_prob == -np.inf), f"seed={seed}"
    assert np.all(nk == 0) and np.all(sums == 0) and np.all(scatter == 0), f"seed={seed}"
    weights[1] = 0  # a zero-weight component is empty: mean and scatter 0, the rest finite
    _, nk, sums, scatter = ops.gmm_em_step(X, weights, means, prec, "full")
    assert nk[1] == 0 and np.all(sums[1] == 0) and np.all(scatter[1] == 0), f"seed={seed}"
    assert np.all(np.isfinite(scatter)), f"seed={seed}"


def test_em_step_does_not_depend_on_the_thread_count(rng, seed):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    X = rng.normal(size=(20_000, 5))
    results = []
    for threads in (1, 2):
        with threadpoolctl.threadpool_limits(threads, user_api="openmp"):
            results.append([ops.gmm_em_step(X, *random_mixture(np.random.default_rng(seed), 4, 5, ct), ct)
                            for ct in COVARIANCE_TYPES])
    for a, b in zip(*results):
        for x, y in zip(a, b):
            assert np.array_equal(x, y), f"seed={seed}"


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_ops_return_the_input_kind_and_dtype(rng, seed, covariance_type, kind):
    N, K, D = 123, 4, 6
    weights, means, prec = random_mixture(rng, K, D, covariance_type)
    X = rng.normal(size=(N, D)).astype(np.float32)
    args = [X, weights.astype(np.float32), means.astype(np.float32), prec.astype(np.float32)]
    if kind == "torch":
        torch = pytest.importorskip("torch")
        args = [torch.from_numpy(a) for a in args]
    log_prob, log_resp = ops.gmm_log_resp(*args, covariance_type, return_log_resp=True)
    nk, sums, scatter = ops.gmm_suff_stats(args[0], log_resp, covariance_type, log=True)
    fused = ops.gmm_em_step(*args, covariance_type)
    for out, shape in ((log_prob, (N,)), (log_resp, (N, K)), (nk, (K,)), (sums, (K, D)),
                       (scatter, scatter_shape(covariance_type, K, D)), *zip(fused, (
                           (N,), (K,), (K, D), scatter_shape(covariance_type, K, D)))):
        assert tuple(out.shape) == shape
        assert str(out.dtype).endswith("float32"), f"seed={seed}"
        assert (kind == "torch") == (type(out).__module__.startswith("torch"))
    ref_lp, ref_lr = reference.gmm_log_resp(X, weights.astype(np.float32), means.astype(np.float32),
                                            prec.astype(np.float32), covariance_type)
    assert rel_err(np.asarray(log_prob), ref_lp) < RTOL["float32"], f"seed={seed}"
    # The log-space and linear-space statistics agree.
    lin = ops.gmm_suff_stats(X, np.exp(ref_lr).astype(np.float32), covariance_type)
    for a, b in zip((nk, sums, scatter), lin):
        assert rel_err(np.asarray(a), b) < 1e-5, f"seed={seed}"


def test_log_prob_alone_matches_the_log_resp_pass(rng, seed):
    weights, means, prec = random_mixture(rng, 6, 4, "full")
    X = rng.normal(size=(500, 4))
    alone = ops.gmm_log_resp(X, weights, means, prec, "full")
    with_resp, _ = ops.gmm_log_resp(X, weights, means, prec, "full", return_log_resp=True)
    assert np.array_equal(alone, with_resp), f"seed={seed}"


def test_zero_probability_gives_minus_inf_never_nan(rng, seed):
    weights, means, prec = random_mixture(rng, 3, 2, "diag")
    X = rng.normal(size=(40, 2))
    log_prob, log_resp = ops.gmm_log_resp(X, np.zeros(3), means, prec, "diag", return_log_resp=True)
    assert np.all(log_prob == -np.inf) and np.all(log_resp == -np.inf), f"seed={seed}"
    # A zero-weight component gets log responsibility -inf; the others stay finite.
    weights[1] = 0
    log_prob, log_resp = ops.gmm_log_resp(X, weights, means, prec, "diag", return_log_resp=True)
    assert np.all(np.isfinite(log_prob)) and np.all(log_resp[:, 1] == -np.inf)
    assert np.all(np.isfinite(log_resp[:, [0, 2]])), f"seed={seed}"


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_float32_far_from_origin_keeps_positive_variances(rng, seed, covariance_type):
    # scikit-learn issue #30382: E[x^2] - mu^2 in float32 cancels for data offset by 1e4.
    X = (1e4 + 0.01 * rng.normal(size=(20_000, 3))).astype(np.float32)
    resp = rng.dirichlet(np.ones(2), size=len(X)).astype(np.float32)
    nk, _, scatter = ops.gmm_suff_stats(X, resp, covariance_type)
    _, _, ref = reference.gmm_suff_stats(X, resp, covariance_type)
    variances = np.diagonal(scatter, axis1=-2, axis2=-1) if covariance_type in ("full", "tied") else scatter
    assert np.all(variances > 0), f"seed={seed}"
    assert rel_err(scatter, ref) < 1e-4, f"seed={seed}"


def test_empty_component_has_zero_mean_and_scatter_not_nan(rng, seed):
    X = rng.normal(size=(50, 3))
    resp = np.zeros((50, 2))
    resp[:, 0] = 1
    nk, sums, scatter = ops.gmm_suff_stats(X, resp, "full")
    assert nk[1] == 0 and np.all(sums[1] == 0) and np.all(scatter[1] == 0), f"seed={seed}"
    assert np.all(np.isfinite(scatter)), f"seed={seed}"


def test_statistics_do_not_depend_on_the_thread_count(rng, seed):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    X = rng.normal(size=(20_000, 5))
    resp = rng.dirichlet(np.ones(4), size=len(X))
    results = []
    for threads in (1, 2):
        with threadpoolctl.threadpool_limits(threads, user_api="openmp"):
            results.append([ops.gmm_suff_stats(X, resp, ct) for ct in COVARIANCE_TYPES])
    for a, b in zip(*results):
        for x, y in zip(a, b):
            assert np.array_equal(x, y), f"seed={seed}"


def test_inputs_are_not_modified(rng):
    weights, means, prec = random_mixture(rng, 3, 4, "full")
    X = rng.normal(size=(100, 4))
    copies = [a.copy() for a in (X, weights, means, prec)]
    _, log_resp = ops.gmm_log_resp(X, weights, means, prec, "full", return_log_resp=True)
    lr_copy = log_resp.copy()
    ops.gmm_suff_stats(X, log_resp, "full", log=True)
    for a, b in zip((X, weights, means, prec, log_resp), copies + [lr_copy]):
        assert np.array_equal(a, b)


def _bad_log_resp_cases(rng):
    w, mu, P = random_mixture(rng, 3, 2, "full")
    X = rng.normal(size=(10, 2))
    nan_X = X.copy()
    nan_X[0, 0] = np.nan
    lower = P.copy()
    lower[1, 1, 0] = 0.5
    nonpos = P.copy()
    nonpos[2, 1, 1] = 0.0
    return {
        "nan_X": ((nan_X, w, mu, P, "full"), ValueError, "X"),
        "X_1d": ((X[0], w, mu, P, "full"), ValueError, "X"),
        "X_strings": ((np.array([["a", "b"]]), w, mu, P, "full"), TypeError, "X"),
        "empty_X": ((X[:0], w, mu, P, "full"), ValueError, "X"),
        "means_D": ((X, w, mu[:, :1], P, "full"), ValueError, "means"),
        "weights_shape": ((X, w[:2], mu, P, "full"), ValueError, "weights"),
        "negative_weight": ((X, np.array([0.5, -0.1, 0.6]), mu, P, "full"), ValueError, "weights"),
        "prec_shape": ((X, w, mu, P[:, :1], "full"), ValueError, "precisions_cholesky"),
        "not_upper": ((X, w, mu, lower, "full"), ValueError, "precisions_cholesky"),
        "not_positive_definite": ((X, w, mu, nonpos, "full"), ValueError, "precisions_cholesky"),
        "diag_nonpositive": ((X, w, mu, -np.ones((3, 2)), "diag"), ValueError, "precisions_cholesky"),
        "covariance_type": ((X, w, mu, P, "banana"), ValueError, "covariance_type"),
    }


@pytest.mark.parametrize("op", [ops.gmm_log_resp, ops.gmm_em_step], ids=["log_resp", "em_step"])
@pytest.mark.parametrize("case", list(_bad_log_resp_cases(np.random.default_rng(0))))
def test_gmm_e_step_ops_reject_bad_input(rng, op, case):
    args, error, name = _bad_log_resp_cases(rng)[case]
    with pytest.raises(error, match=name):
        op(*args)


@pytest.mark.parametrize("case", ["nan", "negative", "shape", "K0", "strings", "covariance_type"])
def test_gmm_suff_stats_rejects_bad_input(rng, case):
    X = rng.normal(size=(10, 2))
    resp = rng.dirichlet(np.ones(3), size=10)
    if case == "nan":
        resp[3, 1] = np.nan
    elif case == "negative":
        resp[3, 1] = -0.2
    elif case == "shape":
        resp = resp[:9]
    elif case == "K0":
        resp = resp[:, :0]
    elif case == "strings":
        resp = np.full((10, 3), "x")
    covariance_type = "banana" if case == "covariance_type" else "full"
    error = TypeError if case == "strings" else ValueError
    with pytest.raises(error, match="covariance_type" if case == "covariance_type" else "resp"):
        ops.gmm_suff_stats(X, resp, covariance_type)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", ["gmm_log_resp", "gmm_em_step"])
def test_tied_outlier_in_a_tile_keeps_the_other_points_terms(dtype, op):
    """Found by the property tests: the tied E-step whitens a tile about its first point c,
    ||(x - mu_k) P||^2 = ||(x - c) P - (mu_k - c) P||^2; with an outlier as c the difference
    lost every bit of a nearby point's term (log p(x) of x = -0.13 came out as if x = mu), and
    with a large factor both sides overflowed to inf - inf = NaN. Such components are now
    recomputed directly; the log densities match the diagonal model's."""
    big = 1e38 if dtype == "float32" else 1e300
    X = np.array([[big], [-0.13210486], [0.5]], dtype)
    means = np.array([[0.1049]], dtype)
    weights = np.ones(1, dtype)
    for factor in (1.0, 1e30 if dtype == "float32" else 1e200):
        tied = getattr(ops, op)(X, weights, means, np.full((1, 1), factor, dtype), "tied")
        diag = getattr(ops, op)(X, weights, means, np.full((1, 1), factor, dtype), "diag")
        log_prob_tied = tied[0] if op == "gmm_em_step" else tied
        log_prob_diag = diag[0] if op == "gmm_em_step" else diag
        assert not np.isnan(log_prob_tied).any()
        np.testing.assert_array_equal(log_prob_tied, log_prob_diag)
        want, _ = reference.gmm_log_resp(X[1:], weights, means, np.full((1, 1), factor), "tied")
        with np.errstate(over="ignore"):
            want = want.astype(dtype)  # beyond the dtype's range: -inf
        np.testing.assert_allclose(log_prob_tied[1:], want, rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_spherical_em_step_scatter_with_an_overflowing_zero_weight_point(dtype):
    """Found by the property tests: the spherical trace is summed as r_p maha_p sigma^2 from
    the E-step's terms; a point of responsibility 0 whose maha overflowed to inf added
    0 * inf = NaN to the scatter. Such points now add 0."""
    big = 1e38 if dtype == "float32" else 1e300
    X = np.array([[big], [-0.13210486], [0.25]], dtype)
    args = (X, np.ones(1, dtype), np.array([[0.1049]], dtype), np.ones(1, dtype), "spherical")
    log_prob, nk, sums, scatter = ops.gmm_em_step(*args)
    assert log_prob[0] == -np.inf and np.isfinite(scatter).all()
    _, want_nk, want_sums, want_scatter = reference.gmm_em_step(X[1:], *args[1:])
    np.testing.assert_allclose(nk, want_nk, rtol=1e-6)
    np.testing.assert_allclose(sums, want_sums, rtol=1e-6)
    np.testing.assert_allclose(scatter, want_scatter, rtol=1e-4)


@pytest.mark.parametrize("big", [1e7, 1e15])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tied_em_step_with_an_outlier_as_first_point(dtype, big):
    """Found by the property tests: the fused tied M-step summed every point's scatter about one
    shift, the first point, so an outlier there cancelled the other points' statistics away
    (float32 sums -6.7e7 instead of 0.47, scatter -1.3e23 instead of 5.2). Each point is now
    taken about its most responsible component's mean.

    The responsibilities here are exactly 0 and 1, so the exact statistics are rational: the
    check is against them, not against the float64 reference, whose mu_0 = 1e15 / (1 + 10 eps)
    is itself rounded by 0.06 (ulp 0.125) and moves the scatter by 0.13."""
    X = np.array([[big], [-0.13], [0.2], [0.4]], dtype)
    args = (X, np.array([0.5, 0.5], dtype), np.array([[big], [0.1]], dtype), np.ones((1, 1), dtype), "tied")
    _, nk, sums, scatter = ops.gmm_em_step(*args)
    np.testing.assert_array_equal(nk, [1, 3])
    x = [Fraction(float(v)) for v in X[:, 0]]
    guard = Fraction(10) * Fraction(np.finfo(np.float64).eps)
    mu0, mu1 = x[0] / (1 + guard), sum(x[1:]) / (3 + guard)
    want_scatter = (x[0] - mu0) ** 2 + sum((v - mu1) ** 2 for v in x[1:])
    np.testing.assert_allclose(sums[:, 0], [float(x[0]), float(sum(x[1:]))], rtol=1e-6)
    np.testing.assert_allclose(scatter[0, 0], float(want_scatter), rtol=1e-5)


@pytest.mark.parametrize("op", ["gmm_log_resp", "gmm_em_step"])
def test_spherical_float32_wide_component_is_not_nan(op):
    """Found by the property tests (genfast.Gaussian on float32 [1e38, -0.13]): the spherical
    E-step formed ||x - mu||^2 (inf) times 1 / sigma^2 (underflowed to 0) = NaN; it now scales
    each element, ((x_d - mu_d) / sigma)^2, as the diagonal model does."""
    X = np.array([[1e38], [-0.13210486]], np.float32)
    args = (X, np.ones(1, np.float32), np.array([[5e37]], np.float32), np.array([2e-38], np.float32))
    out = getattr(ops, op)(*args, "spherical")
    log_prob = out[0] if op == "gmm_em_step" else out
    want, _ = reference.gmm_log_resp(X, *args[1:], "spherical")
    np.testing.assert_allclose(log_prob, want, rtol=1e-5)
    np.testing.assert_array_equal(log_prob, getattr(ops, op)(*args[:3], args[3][:, None], "diag")[0]
                                  if op == "gmm_em_step" else getattr(ops, op)(*args[:3], args[3][:, None], "diag"))
