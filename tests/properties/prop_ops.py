"""Property tests of genfast.ops on numpy arrays and CPU torch tensors (see propcheck.py).

Each test draws every argument (shape with 0, 1 and odd sizes; dtype; layout; values with
NaN/inf/1e38/denormals/equal/duplicated rows), asks its own model of the documented rules
whether the call is valid, runs it through propcheck.outcome and compares what it returns
with genfast.reference, computed in float64 on the values as the op sees them (after its
dtype conversion) and rounded to the output dtype.

Contracts for valid but extreme values (decided per op):
- kmeans_assign / kmeans_lloyd_step: X and C must satisfy max|v| <= sqrt(max(dtype) / (4 D)),
  so that every squared distance (and the kernel's expanded form ||c||^2 - 2 x.c) is finite in
  X's dtype; larger values raise ValueError naming X or C (float32: about 9e18 / sqrt(D); pass
  float64). Within that range sq_dist is the reference rounded to the dtype, and the label's
  reference distance is within the rounding bound of the expanded form of the minimum:
  d(label) - d(min) <= 2 (D + 2) eps ((|x| + |c_label|)^2 + (|x| + |c_min|)^2) (+ a denormal
  margin). Ties at that level may go either way (the near-tie fix is elsewhere).
- kmeans_update: the weights and sums are the float64 reference rounded to X's dtype (+-inf
  where it overflows); means are those rounded sums divided by those weights in X's dtype
  (inf where the sum overflowed), 0 for an empty cluster. sample_weight must be finite,
  non-negative and sum (per problem) to a finite value in X's dtype, else ValueError.
- gmm_*: log_prob / log_resp are the reference rounded to the dtype; where the reference log
  density (of x, or of x and component k for log_resp[n, k]) is below -max(dtype)/2 (its
  squared Mahalanobis distance overflows the dtype), -inf is accepted. Statistics (nk, sums,
  scatter) are the float64 reference rounded; gmm_em_step sums each tile about shifts in X's
  dtype before moving the statistics to the new means (the given means, then the new means
  again where they lie far from them, at most 4 passes), so its sums and scatter are
  accurate relative to sum_n r |x - m_k| and sum_n r |x - m_k|^2 (m_k the given means) at
  worst, not to the centred values alone.
- elbo / log_importance_weights / logmeanexp: the float64 reference rounded to the dtype
  (+-inf where it overflows). The per-element terms are formed in the input's dtype: where the
  Gaussian's squared residual (x - mean)^2 (or its scaled form) is beyond the dtype's range,
  the sums holding it (and that element's gradient) are +-inf. elbo with beta = 0 is rec
  exactly (never 0 * inf). Bernoulli data is drawn in the likelihood's domain [0, 1].
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from genfast import ops, reference

import propcheck as pc
from propcheck import Expect, args, assert_close, check_output, examples, kinds, outcome, sizes


def _lead(batched, B):
    return (B,) if batched else ()


# ============================================================================ k-means
def kmeans_limit(dtype, D):
    """Largest |value| kmeans_assign accepts in `dtype` for D features (see the docstring)."""
    return math.sqrt(float(np.finfo(dtype).max) / (4 * max(D, 1)))


@st.composite
def kmeans_shapes(draw):
    batched = draw(st.integers(0, 3)) == 0
    B = draw(sizes(0, 3)) if batched else None
    return batched, B, draw(sizes(0, 40)), draw(sizes(0, 9)), draw(sizes(0, 9))


def draw_points(data, case, kind):
    """(leading batch shape, X, C) Args of a k-means case (batched, B, N, K, D)."""
    batched, B, N, K, D = case
    lead = _lead(batched, B)
    return lead, data.draw(args(lead + (N, D), kind), "X"), data.draw(args(lead + (K, D), kind), "C")


def expect_points(e, X, C, batched, B, N, K, D, *, check_range=True):
    """The model of _points/_centers: (X values, C values, dtype) or Nones, noting faults."""
    xv, dtype = e.effective(X, "X")
    cv, _ = e.effective(C, "C", like=dtype) if C is not None else (None, dtype)
    if N == 0 or D == 0 or (batched and B == 0):
        e.invalid("X")
    if C is not None and K == 0:
        e.invalid("C")
    if check_range and dtype is not None:
        limit = kmeans_limit(dtype, D)
        if xv is not None and xv.size and np.abs(xv).max() > limit:
            e.invalid("X")
        if cv is not None and cv.size and np.abs(cv).max() > limit:
            e.invalid("C")
    return xv, cv, dtype


def assert_labels_by_distance(x, c, labels, sq_dist, dtype, shift=None):
    """labels[i] is a nearest centre up to the expanded form's rounding; sq_dist is the
    reference distance to it, rounded to dtype (x, c float64 (B, N, D), (B, K, D)). shift: the
    point the caller moved the data to the origin from (KMeans centres X on its mean): its
    rounding, eps |shift|, adds to the points' and centres' norms in the bound."""
    labels = pc.to_np64(labels).astype(np.int64)
    K, D = c.shape[-2], c.shape[-1]
    assert labels.min() >= 0 and labels.max() < K, f"labels out of [0, {K}): {labels.min()}..{labels.max()}"
    diff = x[..., :, None, :] - c[..., None, :, :]
    full = (diff * diff).sum(-1)  # (B, N, K)
    best = full.argmin(-1)
    chosen = np.take_along_axis(full, labels[..., None], -1)[..., 0]
    minimum = np.take_along_axis(full, best[..., None], -1)[..., 0]
    m = np.zeros(x.shape[-1]) if shift is None else shift
    xn = np.sqrt(((x - m) ** 2).sum(-1)) + np.sqrt((m * m).sum())
    cn = np.sqrt(((c - m) ** 2).sum(-1)) + np.sqrt((m * m).sum())
    cn_label = np.take_along_axis(np.broadcast_to(cn[..., None, :], full.shape), labels[..., None], -1)[..., 0]
    cn_best = np.take_along_axis(np.broadcast_to(cn[..., None, :], full.shape), best[..., None], -1)[..., 0]
    eps = pc.EPS[dtype]
    bound = 2 * (D + 2) * eps * ((xn + cn_label) ** 2 + (xn + cn_best) ** 2) + 4 * D * float(np.finfo(dtype).tiny)
    bad = chosen - minimum > bound
    assert not bad.any(), (f"{bad.sum()} labels are not a nearest centre within rounding; first at "
                           f"{np.argwhere(bad)[0].tolist()}: d(label)={chosen[bad][0]!r}, d(min)={minimum[bad][0]!r}")
    assert_close(sq_dist, chosen, dtype=dtype, what="sq_dist")


@given(case=kmeans_shapes(), kind=kinds, data=st.data())
@examples(150)
def test_kmeans_assign(case, kind, data):
    batched, B, N, K, D = case
    lead, X, C = draw_points(data, case, kind)
    pc.record_example("test_kmeans_assign", {"X": X, "C": C})
    e = Expect()
    xv, cv, dtype = expect_points(e, X, C, batched, B, N, K, D)
    status, res = outcome(lambda: ops.kmeans_assign(X.value, C.value), {"X": X.value, "C": C.value}, expect=e)
    if status == "rejected":
        return
    labels, sq_dist = res
    check_output(labels, kind=kind, dtype="int64", shape=lead + (N,), what="labels")
    check_output(sq_dist, kind=kind, dtype=dtype, shape=lead + (N,), what="sq_dist")
    x3, c3 = (xv, cv) if batched else (xv[None], cv[None])
    l3, s3 = (labels, sq_dist) if batched else (labels[None], sq_dist[None])
    assert_labels_by_distance(x3, c3, l3, s3, dtype)


LABEL_DTYPES_NUMPY = ("int64",) * 4 + ("int32", "uint8", "bool", "float64", "object")
LABEL_DTYPES_TORCH = ("int64",) * 4 + ("int32", "uint8", "bool", "float32")


@st.composite
def label_args(draw, shape, kind, K):
    """Labels mostly in [0, K); sometimes -1 or K (out of range) or a non-integer dtype."""
    dtype = draw(st.sampled_from(LABEL_DTYPES_NUMPY if kind == "numpy" else LABEL_DTYPES_TORCH))
    seed = draw(st.integers(0, 2**32 - 1))
    values = np.random.default_rng(seed).integers(0, max(K, 1), size=shape).astype(np.float64)
    if values.size and draw(st.integers(0, 7)) == 0:
        values.reshape(-1)[draw(st.integers(0, values.size - 1))] = draw(st.sampled_from([-1, K, 2**40]))
    layout = draw(st.sampled_from(pc.NUMPY_LAYOUTS if kind == "numpy" else pc.TORCH_LAYOUTS))
    if layout in ("zero", "expanded") and values.ndim >= 1 and values.shape[0] >= 1:
        values = np.broadcast_to(values[:1], values.shape).copy()
    return pc.Arg(values, dtype, layout, kind)


def expect_labels(e, labels, K, shape):
    """The model of _labels: integer dtype (bool counts as not integer), values in [0, K)."""
    if labels.dtype not in ("int64", "int32", "uint8"):
        e.invalid("labels")
        return None
    v = labels.stored.astype(np.int64)
    if tuple(v.shape) != tuple(shape) or (v.size and (v.min() < 0 or v.max() >= K)):
        e.invalid("labels")
        return None
    return v


@st.composite
def weight_args(draw, shape, kind):
    """None, or sample weights of `shape`: non-negative (special values sometimes)."""
    if draw(st.booleans()):
        return None
    return draw(args(shape, kind, low=0.0, patterns=("normal", "integers", "equal", "tiny", "huge")))


def expect_weights(e, w, dtype, shapes):
    """The model of _weights: finite, non-negative, a total that is finite in X's dtype."""
    if w is None:
        return None
    wv, _ = e.effective(w, "sample_weight", like=dtype)
    if wv is None or dtype is None:
        return None
    if tuple(wv.shape) not in shapes or (wv < 0).any():
        e.invalid("sample_weight")
        return None
    with np.errstate(over="ignore"):
        if not np.isfinite(wv.sum(-1).astype(dtype)).all():
            e.invalid("sample_weight")
            return None
    return wv


def assert_update(xv, lv, wv, K, out, wsum, dtype, return_means, batched):
    """Sums/means and weights against reference.kmeans_update, per the docstring's contract."""
    x3 = xv if batched else xv[None]
    l3 = lv if batched else lv[None]
    w3 = None if wv is None else np.broadcast_to(wv.reshape(-1, x3.shape[1]), l3.shape)
    sums, weights = reference.kmeans_update(x3, l3, K, w3)
    abs_sums, _ = reference.kmeans_update(np.abs(x3), l3, K, w3)
    out3 = pc.to_np64(out if batched else out[None])
    wsum3 = pc.to_np64(wsum if batched else wsum[None])
    assert_close(wsum3, weights, dtype=dtype, what="weights")
    if not return_means:
        assert_close(out3, sums, dtype=dtype, what="sums", scale=abs_sums)
        return
    # means: the rounded sums divided by the rounded weights, in X's dtype; 0 when empty
    rs, rw = pc.rounded(sums, dtype).astype(dtype), pc.rounded(weights, dtype).astype(dtype)[..., None]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        expected = np.where(rw > 0, rs / np.where(rw > 0, rw, 1), 0).astype(np.float64)
        scale = np.where(rw > 0, abs_sums / np.where(rw > 0, rw, 1), 0)
    assert_close(out3, expected, dtype=dtype, what="means", scale=scale)
    assert (out3[np.broadcast_to(rw == 0, out3.shape)] == 0).all(), "an empty cluster's mean is not 0"


@given(case=kmeans_shapes(), kind=kinds, data=st.data())
@examples(150)
def test_kmeans_update(case, kind, data):
    batched, B, N, K, D = case
    lead = _lead(batched, B)
    X = data.draw(args(lead + (N, D), kind), "X")
    labels = data.draw(label_args(lead + (N,), kind, K), "labels")
    w = data.draw(weight_args(data.draw(st.sampled_from([(N,), lead + (N,)])), kind), "sample_weight")
    n_clusters = data.draw(st.sampled_from([K] * 6 + [np.int64(K), float(K), True, -1]),
                           "n_clusters")
    return_means = data.draw(st.booleans(), "return_means")
    pc.record_example("test_kmeans_update", {"X": X, "labels": labels, "sample_weight": w,
                                             "n_clusters": n_clusters, "return_means": return_means})
    e = Expect()
    if isinstance(n_clusters, (bool, float)) or n_clusters < 1:
        e.invalid("n_clusters")
    xv, _, dtype = expect_points(e, X, None, batched, B, N, K, D, check_range=False)
    lv = expect_labels(e, labels, max(int(n_clusters), 0), lead + (N,))
    wv = expect_weights(e, w, dtype, {(N,), lead + (N,)})
    arrays = {"X": X.value, "labels": labels.value, "sample_weight": None if w is None else w.value}
    status, res = outcome(lambda: ops.kmeans_update(X.value, labels.value, n_clusters,
                                                    None if w is None else w.value, return_means=return_means),
                          arrays, expect=e)
    if status == "rejected":
        return
    out, wsum = res
    check_output(out, kind=kind, dtype=dtype, shape=lead + (K, D), what="sums/means")
    check_output(wsum, kind=kind, dtype=dtype, shape=lead + (K,), what="weights")
    assert_update(xv, lv, wv, K, out, wsum, dtype, return_means, batched)


@given(case=kmeans_shapes(), kind=kinds, data=st.data())
@examples(100)
def test_kmeans_lloyd_step(case, kind, data):
    batched, B, N, K, D = case
    lead, X, C = draw_points(data, case, kind)
    w = data.draw(weight_args(data.draw(st.sampled_from([(N,), lead + (N,)])), kind), "sample_weight")
    return_means = data.draw(st.booleans(), "return_means")
    pc.record_example("test_kmeans_lloyd_step", {"X": X, "C": C, "sample_weight": w, "return_means": return_means})
    e = Expect()
    xv, cv, dtype = expect_points(e, X, C, batched, B, N, K, D)
    wv = expect_weights(e, w, dtype, {(N,), lead + (N,)})
    arrays = {"X": X.value, "C": C.value, "sample_weight": None if w is None else w.value}
    status, res = outcome(lambda: ops.kmeans_lloyd_step(X.value, C.value, None if w is None else w.value,
                                                        return_means=return_means), arrays, expect=e)
    if status == "rejected":
        return
    labels, sq_dist, out, wsum = res
    for a, name, shape, dt in ((labels, "labels", lead + (N,), "int64"), (sq_dist, "sq_dist", lead + (N,), dtype),
                               (out, "sums/means", lead + (K, D), dtype), (wsum, "weights", lead + (K,), dtype)):
        check_output(a, kind=kind, dtype=dt, shape=shape, what=name)
    x3, c3 = (xv, cv) if batched else (xv[None], cv[None])
    l3, s3 = (labels, sq_dist) if batched else (labels[None], sq_dist[None])
    assert_labels_by_distance(x3, c3, l3, s3, dtype)
    # the update half: of the op's own labels (a rounding tie may pick either centre)
    assert_update(xv, pc.to_np64(labels).astype(np.int64), wv, K, out, wsum, dtype, return_means, batched)


# ============================================================================ Gaussian mixtures
COV_TYPES = ("full", "tied", "diag", "spherical")


@st.composite
def structured_arg(draw, values, kind, *, specials=True):
    """An Arg holding the given float64 values (a dtype and layout drawn; a special value
    placed now and then)."""
    values = np.array(values, dtype=np.float64)
    if specials and values.size and draw(st.integers(0, 7)) == 0:
        values.reshape(-1)[draw(st.integers(0, values.size - 1))] = draw(st.sampled_from(pc.SPECIALS))
    dtype = draw(st.sampled_from(pc._WEIGHTED[kind]))
    layout = draw(st.sampled_from(pc.NUMPY_LAYOUTS if kind == "numpy" else pc.TORCH_LAYOUTS))
    if layout in ("zero", "expanded") and values.ndim >= 1 and values.shape[0] >= 1:
        values = np.broadcast_to(values[:1], values.shape).copy()
    return pc.Arg(values, dtype, layout, kind)


def precision_shape(cov, K, D):
    return {"full": (K, D, D), "tied": (D, D), "diag": (K, D), "spherical": (K,)}[cov]


@st.composite
def mixture_params(draw, kind, cov, K, D):
    """(weights, means, precisions_cholesky) Args: positive weights, upper-triangular factors
    with a positive diagonal at a drawn scale; now and then a zero weight, a wrong shape, a
    factor with a non-positive diagonal or a non-zero below it."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    w = rng.uniform(0.05, 1.0, size=K)
    if K and draw(st.integers(0, 5)) == 0:
        w[draw(st.integers(0, K - 1))] = draw(st.sampled_from([0.0, -0.5, 1e-45]))
    if draw(st.integers(0, 15)) == 0:
        w = np.append(w, 0.3)  # wrong length
    scale = draw(st.sampled_from([1.0, 1.0, 1e-3, 1e3, 1e-20, 1e20]))
    shape = precision_shape(cov, K, D)
    if cov in ("full", "tied"):
        P = np.triu(rng.standard_normal(shape) * 0.3, 1)
        idx = np.arange(D)
        P[..., idx, idx] = rng.uniform(0.5, 2.0, size=shape[:-1])
    else:
        P = rng.uniform(0.5, 2.0, size=shape)
    P = P * scale
    if P.size and draw(st.integers(0, 7)) == 0:
        fault = draw(st.sampled_from(["diag_zero", "diag_negative", "below"]))
        flat = P.reshape(-1, *(P.shape[-2:] if cov in ("full", "tied") else P.shape[-1:]))
        if cov in ("full", "tied"):
            i = draw(st.integers(0, D - 1))
            if fault == "below" and D > 1:
                flat[0, D - 1, 0] = 0.25
            else:
                flat[0, i, i] = 0.0 if fault == "diag_zero" else -1.0
        else:
            flat.reshape(-1)[0] = 0.0 if fault == "diag_zero" else -1.0
    means = rng.standard_normal((K, D)) * draw(st.sampled_from([1.0, 1e-3, 1e3, 1e19]))
    return (draw(structured_arg(w, kind), "weights"), draw(structured_arg(means, kind), "means"),
            draw(structured_arg(P, kind), "precisions_cholesky"))


def expect_mixture(e, X, weights, means, prec, cov, N, K, D):
    """The model of ops._mixture: (x, w, m, P values, dtype) with faults noted."""
    if cov not in COV_TYPES:
        e.invalid("covariance_type")
    xv, dtype = e.effective(X, "X")
    if N == 0 or D == 0:
        e.invalid("X")
    mv, _ = e.effective(means, "means", like=dtype)
    if K == 0:
        e.invalid("means")
    wv, _ = e.effective(weights, "weights", like=dtype)
    if wv is not None and (wv.shape != (K,) or (wv < 0).any()):
        e.invalid("weights")
    pv, _ = e.effective(prec, "precisions_cholesky", like=dtype)
    if pv is not None and cov in COV_TYPES:
        if cov in ("full", "tied"):
            mats = pv.reshape(-1, D, D) if D else pv.reshape(0, 0, 0)
            diag = np.diagonal(mats, axis1=1, axis2=2)
            if (diag <= 0).any() or np.tril(mats, -1).any():
                e.invalid("precisions_cholesky")
        elif (pv <= 0).any():
            e.invalid("precisions_cholesky")
    return xv, wv, mv, pv, dtype


def log_terms(xv, wv, mv, pv, cov):
    """(reference log p(x) (N,), log resp (N, K), per-row scale of the summed log terms)."""
    K, D = mv.shape
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        log_prob, log_resp = reference.gmm_log_resp(xv, wv, mv, pv, cov)
        P = reference._full_precision_cholesky(pv, cov, K, D)
        maha = np.stack([(((xv - mv[k]) @ P[k]) ** 2).sum(1) for k in range(K)], 1)
        logdet = np.abs(np.log(np.stack([np.diag(P[k]) for k in range(K)]))).sum(1)
        scale = 0.5 * maha.max(1) + logdet.max() + D + np.abs(np.log(np.where(wv > 0, wv, 1))).max()
    return log_prob, log_resp, scale


def assert_log_densities(log_prob, log_resp, ref_prob, ref_resp, scale, dtype):
    """log_prob and log_resp against the reference, per the docstring's contract."""
    big = float(np.finfo(dtype).max) / 2
    with np.errstate(invalid="ignore"):
        assert_close(log_prob, ref_prob, dtype=dtype, what="log_prob", scale=scale, neg_inf_ok=ref_prob < -big)
        if log_resp is not None:
            dead = ~(ref_prob > -np.inf)[:, None]  # every component has probability 0: -inf
            ref_resp = np.where(dead, -np.inf, ref_resp)
            # log_resp = log joint - log p(x): -inf accepted where either is below -big (the
            # component's own Mahalanobis term may overflow where the difference does not)
            ref_joint = ref_resp + ref_prob[:, None]
            assert_close(log_resp, ref_resp, dtype=dtype, what="log_resp", scale=scale[:, None],
                         neg_inf_ok=(ref_resp < -big) | (ref_joint < -big) | (ref_prob < -big)[:, None])


@given(kind=kinds, cov=st.sampled_from(COV_TYPES * 4 + ("bogus",)), N=sizes(0, 30), K=sizes(0, 5),
       D=sizes(0, 6), return_log_resp=st.booleans(), data=st.data())
@examples(150)
def test_gmm_log_resp(kind, cov, N, K, D, return_log_resp, data):
    X = data.draw(args((N, D), kind), "X")
    weights, means, prec = data.draw(mixture_params(kind, cov if cov in COV_TYPES else "diag", K, D))
    pc.record_example("test_gmm_log_resp", dict(X=X, weights=weights, means=means, precisions_cholesky=prec,
                                                covariance_type=cov, return_log_resp=return_log_resp))
    e = Expect()
    xv, wv, mv, pv, dtype = expect_mixture(e, X, weights, means, prec, cov, N, K, D)
    arrays = dict(X=X.value, weights=weights.value, means=means.value, precisions_cholesky=prec.value)
    status, res = outcome(lambda: ops.gmm_log_resp(*arrays.values(), cov, return_log_resp=return_log_resp),
                          arrays, expect=e)
    if status == "rejected":
        return
    log_prob, log_resp = res if return_log_resp else (res, None)
    check_output(log_prob, kind=kind, dtype=dtype, shape=(N,), what="log_prob")
    if return_log_resp:
        check_output(log_resp, kind=kind, dtype=dtype, shape=(N, K), what="log_resp")
    ref_prob, ref_resp, scale = log_terms(xv, wv, mv, pv, cov)
    assert_log_densities(log_prob, log_resp, ref_prob, ref_resp, scale, dtype)


def stats_tolerances(xv, resp, log_err, log_resp=None):
    """Absolute error bounds of (nk, sums, full scatter) when each r_nk may be off by a factor
    e^(+-log_err[n]), so by e = min(1, r_nk e^log_err) - r_nk (r is in [0, 1] whatever its log
    terms' error; with log_resp, a responsibility that underflowed to 0 in the reference counts
    as e^log_resp): sum_n |e|, sum_n |e| |x|, sum_n |e| (|x| + |mu|)^2 (mu the means)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if log_resp is None:
            re = np.where(resp == 0, 0.0, np.minimum(1.0, resp * np.expm1(log_err)[:, None]))  # 0, never 0 inf
        else:  # NaN log_resp: r = 0 as in resp; -inf + inf (an infinite log term in the row): anything
            bound = np.nan_to_num(np.where(np.isnan(log_resp), -np.inf, log_resp) + log_err[:, None], nan=0.0)
            re = np.maximum(np.exp(np.minimum(0.0, bound)) - resp, 0.0)
        nk = resp.sum(0)
        mu = (resp.T @ xv) / (nk + 10 * np.finfo(np.float64).eps)[:, None]
        dev = np.abs(xv)[:, None, :] + np.abs(mu)[None, :, :]  # (N, K, D)
        nk_tol = re.sum(0)
        sums_tol = re.T @ np.abs(xv)
        full_tol = np.einsum("nk,nki,nkj->kij", re, dev, dev)
    return nk_tol, sums_tol, full_tol


def scatter_scale(xv, resp, cov):
    """sqrt(S_ii S_jj) for the centred scatter S (Cauchy-Schwarz bound of |S_ij|), in the
    covariance type's shape: the size against which the scatter's rounding is measured."""
    _, _, full = reference.gmm_suff_stats(xv, resp, "full")
    d = np.sqrt(np.maximum(np.diagonal(full, axis1=1, axis2=2), 0))
    bound = d[:, :, None] * d[:, None, :]
    return {"full": bound, "tied": bound.sum(0), "diag": np.diagonal(bound, axis1=1, axis2=2),
            "spherical": np.trace(bound, axis1=1, axis2=2)}[cov]


def reduce_full(full, cov):
    return {"full": full, "tied": full.sum(0), "diag": np.diagonal(full, axis1=1, axis2=2),
            "spherical": np.trace(full, axis1=1, axis2=2)}[cov]


def assert_stats(stats, xv, resp, cov, dtype, log_err, shifts=None, log_resp=None):
    """(nk, sums, scatter) against reference.gmm_suff_stats of resp, with responsibilities
    known to a factor e^(+-log_err[n]) (0 when given exactly; log_resp: their logs, when the
    op forms them itself). shifts (K, D): the points the op
    summed about (em_step: the given means), whose size adds to the sums' and scatter's."""
    nk, sums, scatter = (pc.to_np64(s) for s in stats)
    with np.errstate(over="ignore", invalid="ignore"):
        ref = reference.gmm_suff_stats(xv, resp, cov)
        nk_tol, sums_tol, full_tol = stats_tolerances(xv, resp, log_err, log_resp)
        scat_scale = scatter_scale(xv, resp, cov)
        sums_scale = resp.T @ np.abs(xv)
        if shifts is not None:  # sum_n r |x - m_k| and sum_n r |x - m_k|^2 per component
            dev = np.abs(xv[:, None, :] - shifts[None])  # (N, K, D)
            sums_scale = sums_scale + np.einsum("nk,nkd->kd", resp, dev)
            full = np.einsum("nk,nki,nkj->kij", resp, dev, dev)
            scat_scale = scat_scale + reduce_full(full, cov)
        # The reference's own rounding: its means sums / (N_k + 10 eps) carry ~ (1 + log2 N) eps
        # of the weighted mean of |x| (e), which moves sum_n r (x - mu)(x - mu)^T by up to
        # sum_n r (|x - mu| e^T + e |x - mu|^T) + N_k e e^T (all of it when every point sits on
        # its mean, and the scatter is only the 10 eps guard's dust, ~1e-30).
        nk_ref = resp.sum(0) + 10 * np.finfo(np.float64).eps
        e = 4 * (1 + np.log2(len(xv) + 1)) * np.finfo(np.float64).eps * (resp.T @ np.abs(xv)) / nk_ref[:, None]
        spread = np.einsum("nk,nkd->kd", resp, np.abs(xv[:, None, :] - (resp.T @ xv / nk_ref[:, None])[None]))
        ref_rounding = (spread[:, :, None] * e[:, None, :] + e[:, :, None] * spread[:, None, :]
                        + nk_ref[:, None, None] * e[:, :, None] * e[:, None, :])
    rt = pc.RTOL[dtype]
    # (the tolerated part counts in the scale too: a sum that may hold it is rounded at its size)
    assert_close(nk, ref[0], dtype=dtype, what="nk", scale=nk_tol, atol=nk_tol)
    assert_close(sums, ref[1], dtype=dtype, what="sums", scale=sums_scale + sums_tol, atol=sums_tol)
    scatter_tol = reduce_full(full_tol + ref_rounding, cov)
    assert_close(scatter, ref[2], dtype=dtype, what="scatter", scale=scat_scale + scatter_tol, atol=scatter_tol,
                 rtol=rt)


@st.composite
def resp_arg(draw, kind, N, K, log):
    """Responsibilities (N, K) >= 0 (rows of any sum), or their logs (-inf allowed); now and
    then a negative value, NaN or +inf (from the specials)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    r = rng.uniform(0, 1, size=(N, K))
    r[rng.random((N, K)) < 0.2] = 0.0
    if log:
        with np.errstate(divide="ignore"):
            r = np.log(r)
    return draw(structured_arg(r, kind))


@given(kind=kinds, cov=st.sampled_from(COV_TYPES * 4 + ("bogus",)), N=sizes(0, 30), K=sizes(0, 5),
       D=sizes(0, 6), log=st.booleans(), data=st.data())
@examples(120)
def test_gmm_suff_stats(kind, cov, N, K, D, log, data):
    X = data.draw(args((N, D), kind), "X")
    resp = data.draw(resp_arg(kind, N, K, log), "resp")
    pc.record_example("test_gmm_suff_stats", dict(X=X, resp=resp, covariance_type=cov, log=log))
    e = Expect()
    if cov not in COV_TYPES:
        e.invalid("covariance_type")
    xv, dtype = e.effective(X, "X")
    if N == 0 or D == 0:
        e.invalid("X")
    rv, _ = e.effective(resp, "resp", like=dtype, allow_neg_inf=log)
    if rv is not None and (K == 0 or (not log and (rv < 0).any())):
        e.invalid("resp")
    status, res = outcome(lambda: ops.gmm_suff_stats(X.value, resp.value, cov, log=log),
                          {"X": X.value, "resp": resp.value}, expect=e)
    if status == "rejected":
        return
    for s, name, shape in zip(res, ("nk", "sums", "scatter"), ((K,), (K, D), precision_shape(cov, K, D))):
        check_output(s, kind=kind, dtype=dtype, shape=shape, what=name)
    r = np.exp(rv) if log else rv
    log_err = np.full(N, 4 * pc.EPS[dtype]) * (1 + (np.abs(np.where(np.isfinite(rv), rv, 0)).max(1) if log else 0))
    assert_stats(res, xv, r, cov, dtype, log_err)


@given(kind=kinds, cov=st.sampled_from(COV_TYPES), N=sizes(0, 30), K=sizes(0, 5), D=sizes(0, 6),
       data=st.data())
@examples(120)
def test_gmm_em_step(kind, cov, N, K, D, data):
    X = data.draw(args((N, D), kind), "X")
    weights, means, prec = data.draw(mixture_params(kind, cov, K, D))
    pc.record_example("test_gmm_em_step", dict(X=X, weights=weights, means=means, precisions_cholesky=prec,
                                               covariance_type=cov))
    e = Expect()
    xv, wv, mv, pv, dtype = expect_mixture(e, X, weights, means, prec, cov, N, K, D)
    arrays = dict(X=X.value, weights=weights.value, means=means.value, precisions_cholesky=prec.value)
    status, res = outcome(lambda: ops.gmm_em_step(*arrays.values(), cov), arrays, expect=e)
    if status == "rejected":
        return
    for s, name, shape in zip(res, ("log_prob", "nk", "sums", "scatter"),
                              ((N,), (K,), (K, D), precision_shape(cov, K, D))):
        check_output(s, kind=kind, dtype=dtype, shape=shape, what=name)
    ref_prob, ref_resp, scale = log_terms(xv, wv, mv, pv, cov)
    assert_log_densities(res[0], None, ref_prob, None, scale, dtype)
    big = float(np.finfo(dtype).max) / 2
    if (ref_prob < -big).any():
        return  # the dtype's -inf there (documented): responsibilities of such rows are not compared
    with np.errstate(invalid="ignore"):
        resp = np.where(np.isnan(ref_resp), 0.0, np.exp(ref_resp))
    # the E-step's responsibilities carry the log terms' rounding, ~ eps * scale in the log
    # (float32 Mahalanobis terms of 5e8 cannot tell components apart by less than about 30, nor
    # can a float32 point at 1e14 tell means 1 apart)
    log_err = 8 * pc.EPS[dtype] * (scale + 1)
    # summed about the given means in X's dtype, then moved to the new ones (see the docstring)
    assert_stats(res[1:], xv, resp, cov, dtype, log_err, shifts=mv, log_resp=ref_resp)


# ============================================================================ ELBO
def rec_scale(x, out, logvar, likelihood):
    """Per sample, the magnitudes of the reconstruction terms summed (for their rounding).
    Bernoulli: the kernel's x l - log(1 + e^l) and the reference's x log p + (1 - x) log(1 - p),
    whose two terms cancel for x outside [0, 1] (an integer x cast from inf is 2^30 - 1)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if likelihood == "bernoulli":
            reference_terms = np.abs(x) * np.logaddexp(0.0, -out) + np.abs(1.0 - x) * np.logaddexp(0.0, out)
            return (np.abs(x * out) + np.logaddexp(0.0, out) + np.abs(out) + reference_terms).sum(1)
        return 0.5 * (np.log(2 * np.pi) + np.abs(logvar) + (np.abs(x) + np.abs(out)) ** 2 * np.exp(-logvar)).sum(1)


def term_overflows(x, out, logvar, likelihood, dtype):
    """Per element: whether the Gaussian's squared residual (x - mean)^2, or its scaled form
    (x - mean)^2 exp(-logvar), is beyond the dtype's range (the kernel forms them in the
    input's dtype, so the term and the sums holding it are +-inf there)."""
    big = float(np.finfo(dtype).max)
    if likelihood != "gaussian":
        return np.zeros(np.shape(x), bool)
    with np.errstate(over="ignore", invalid="ignore"):
        sq = (x - out) ** 2
        return (sq > big / 2) | (sq * np.exp(-logvar) > big / 2) | (np.exp(-logvar) > big / 2)


def grad_scales(x, out, logvar, mu, lv, likelihood, beta):
    """{input: per-element magnitude of its gradient's pieces}."""
    with np.errstate(over="ignore", invalid="ignore"):
        if likelihood == "bernoulli":
            s = {"decoder_out": np.abs(x) + 1.0}
        else:
            w = np.exp(-logvar)
            s = {"decoder_out": (np.abs(x) + np.abs(out)) * w,
                 "decoder_logvar": 0.5 * ((np.abs(x) + np.abs(out)) ** 2 * w + 1.0)}
        if mu is not None:
            s["mu"] = beta * np.abs(mu)
            s["logvar"] = beta * 0.5 * (np.exp(lv) + 1.0)
    return s


def bernoulli_x(shape, kind):
    """Bernoulli data: values in the likelihood's domain [0, 1] (the reference's
    x log p + (1 - x) log(1 - p) cancels for |x| >> 1), specials NaN/inf/denormals/-0."""
    return args(shape, kind, low=0.0, high=1.0, specials=(math.nan, math.inf, -math.inf, 1e-40, 5e-324, -0.0))


@given(kind=kinds, B=sizes(0, 9), D=sizes(0, 12), L=sizes(0, 5), data=st.data())
@examples(150)
def test_elbo(kind, B, D, L, data):
    likelihood = data.draw(st.sampled_from(["bernoulli", "gaussian", "gaussian", "poisson"]), "likelihood")
    x = data.draw(bernoulli_x((B, D), kind) if likelihood == "bernoulli" else args((B, D), kind), "x")
    out = data.draw(args((B, D), kind), "decoder_out")
    per_element = likelihood == "gaussian" and data.draw(st.booleans(), "per_element")
    out_logvar = data.draw(args((B, D), kind), "decoder_logvar") if per_element else None
    variance = data.draw(st.sampled_from([None, None, 0.5, 3.0, 0.0, -1.0, math.inf]), "variance") \
        if likelihood == "gaussian" and not per_element else None
    with_kl = data.draw(st.booleans(), "with_kl")
    mu = data.draw(args((B, L), kind), "mu") if with_kl else None
    lv = data.draw(args((B, L), kind), "logvar") if with_kl else None
    beta = data.draw(st.sampled_from([1.0, 1.0, 0.0, 0.3, 2, -1.0, math.nan]), "beta")
    gradients = data.draw(st.booleans(), "gradients")
    pc.record_example("test_elbo", dict(likelihood=likelihood, x=x, decoder_out=out, decoder_logvar=out_logvar,
                                        variance=variance, mu=mu, logvar=lv, beta=beta, gradients=gradients))
    e = Expect()
    if likelihood not in ("bernoulli", "gaussian"):
        e.invalid("likelihood")
    if variance is not None and not (math.isfinite(variance) and variance > 0):
        e.invalid("variance")
    if not (math.isfinite(beta) and beta >= 0):
        e.invalid("beta")
    xv, dtype = e.effective(x, "x")
    ov, _ = e.effective(out, "decoder_out", like=dtype)
    olv = e.effective(out_logvar, "decoder_logvar", like=dtype)[0] if per_element else None
    muv = e.effective(mu, "mu", like=dtype)[0] if with_kl else None
    lvv = e.effective(lv, "logvar", like=dtype)[0] if with_kl else None
    val = lambda a: None if a is None else a.value  # noqa: E731
    arrays = dict(x=x.value, decoder_out=out.value, decoder_logvar=val(out_logvar), mu=val(mu), logvar=val(lv))
    status, res = outcome(lambda: ops.elbo(x.value, out.value, val(mu), val(lv), likelihood=likelihood,
                                           decoder_logvar=val(out_logvar), variance=variance, beta=beta,
                                           gradients=gradients), arrays, expect=e)
    if status == "rejected":
        return
    for r, name in zip(res[:3], ("elbo", "rec", "kl")):
        check_output(r, kind=kind, dtype=dtype, shape=(B,), what=name)
    logvar = olv if per_element else np.full_like(xv, math.log(variance or 1.0))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        _, rec, kl = reference.elbo(xv, ov, muv, lvv, likelihood, olv, variance, beta)
        elbo = rec if beta == 0 else rec - beta * kl  # beta = 0: rec exactly, never 0 * inf
        r_scale = rec_scale(xv, ov, logvar, likelihood)
        k_scale = np.zeros(B) if muv is None else 0.5 * (muv ** 2 + np.exp(lvv) + np.abs(lvv) + 1).sum(1)
    rt = 8 * pc.EPS[dtype] if dtype == "float64" else pc.RTOL[dtype]
    over = term_overflows(xv, ov, logvar, likelihood, dtype)
    row_over = over.any(1)
    assert_close(res[1], rec, dtype=dtype, what="rec", scale=r_scale, rtol=rt, inf_ok=row_over)
    assert_close(res[2], kl, dtype=dtype, what="kl", scale=k_scale, rtol=rt)
    assert_close(res[0], elbo, dtype=dtype, what="elbo", scale=r_scale if beta == 0 else r_scale + beta * k_scale,
                 rtol=rt, inf_ok=row_over)
    if not gradients:
        return
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        ref_grads = reference.elbo_gradients(xv, ov, muv, lvv, likelihood, olv, variance, beta)
        scales = grad_scales(xv, ov, logvar, muv, lvv, likelihood, beta)
    grads = res[3]
    expected = {n for n in ("decoder_out", "decoder_logvar", "mu", "logvar") if n in ref_grads}
    assert set(grads) == expected, f"gradients for {sorted(grads)}, expected {sorted(expected)}"
    for n in expected:
        check_output(grads[n], kind=kind, dtype=dtype, shape=ref_grads[n].shape, what=f"gradient {n}")
        assert_close(grads[n], ref_grads[n], dtype=dtype, what=f"gradient {n}", scale=scales[n], rtol=rt,
                     inf_ok=over if n.startswith("decoder") else None)


# ============================================================================ Monte Carlo
@given(kind=kinds, ndim=st.integers(0, 3), data=st.data())
@examples(150)
def test_logmeanexp_stats(kind, ndim, data):
    shape = tuple(data.draw(st.lists(sizes(0, 12), min_size=ndim, max_size=ndim), "shape"))
    a = data.draw(args(shape, kind), "a")
    dim = data.draw(st.sampled_from([-1, -1, 0, 1, 2, ndim, -ndim - 1]), "dim")
    pc.record_example("test_logmeanexp_stats", dict(a=a, dim=dim))
    e = Expect()
    av, dtype = e.effective(a, "a", allow_neg_inf=True)
    if not -ndim <= dim < ndim:
        e.invalid("dim")  # also for a 0-d a (no axis at all)
    elif shape[dim] == 0:
        e.invalid("a")
    status, res = outcome(lambda: ops.logmeanexp_stats(a.value, dim), {"a": a.value}, expect=e,
                          may_blame=("a",) if ndim == 0 else ())
    if status == "rejected":
        return
    out_shape = shape[:dim % ndim] + shape[dim % ndim + 1:]
    for r, name in zip(res, ("log_mean", "ess", "std_error")):
        check_output(r, kind=kind, dtype=dtype, shape=out_shape, what=name)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        want = reference.logmeanexp_stats(av, axis=dim)
    M = shape[dim]
    spread = np.abs(np.where(np.isfinite(av), av, 0)).max(axis=dim) + 1  # the size of the shifted terms
    assert_close(res[0], want[0], dtype=dtype, what="log_mean", scale=spread)
    assert_close(res[1], want[1], dtype=dtype, what="ess", scale=M)
    assert_close(res[2], want[2], dtype=dtype, what="std_error", scale=1.0)


@given(kind=kinds, B=sizes(0, 6), m=sizes(0, 6), D=sizes(0, 9), data=st.data())
@examples(120)
def test_log_importance_weights(kind, B, m, D, data):
    likelihood = data.draw(st.sampled_from(["bernoulli", "gaussian", "gaussian"]), "likelihood")
    x = data.draw(bernoulli_x((B, D), kind) if likelihood == "bernoulli" else args((B, D), kind), "x")
    out = data.draw(args((B, m, D), kind), "decoder_out")
    per_element = likelihood == "gaussian" and data.draw(st.booleans(), "per_element")
    out_logvar = data.draw(args((B, m, D), kind), "decoder_logvar") if per_element else None
    variance = data.draw(st.sampled_from([None, 0.5, 2.0, 0.0]), "variance") \
        if likelihood == "gaussian" and not per_element else None
    log_prior = data.draw(args(data.draw(st.sampled_from([(B, m)] * 6 + [(m,), (B, m + 1)])), kind), "log_prior")
    log_proposal = data.draw(args((B, m), kind), "log_proposal")
    pc.record_example("test_log_importance_weights", dict(likelihood=likelihood, x=x, decoder_out=out,
                      decoder_logvar=out_logvar, variance=variance, log_prior=log_prior, log_proposal=log_proposal))
    e = Expect()
    if variance is not None and not variance > 0:
        e.invalid("variance")
    xv, dtype = e.effective(x, "x")
    rest = {}
    for name, a in (("decoder_out", out), ("decoder_logvar", out_logvar), ("log_prior", log_prior),
                    ("log_proposal", log_proposal)):
        if a is not None:
            rest[name] = e.effective(a, name, like=dtype, finite=False)[0]
    if log_prior.values.shape != (B, m):
        e.invalid("log_prior")
    val = lambda a: None if a is None else a.value  # noqa: E731
    if e.ok:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            want = reference.log_importance_weights(xv, rest["decoder_out"], rest["log_prior"], rest["log_proposal"],
                                                    likelihood, rest.get("decoder_logvar"), variance) \
                if m else np.zeros((B, 0))  # (the reference stacks its m columns: none to stack)
        if (np.isnan(want) | (want == np.inf)).any():
            # documented: a NaN or +inf log-weight (from NaN/inf inputs) raises, naming the inputs
            e.invalid("decoder_out", "decoder_logvar", "log_prior", "log_proposal")
    arrays = dict(x=x.value, decoder_out=out.value, decoder_logvar=val(out_logvar), log_prior=log_prior.value,
                  log_proposal=log_proposal.value)
    # documented: a log-weight that comes out NaN or +inf from infinite inputs raises; the
    # kernel's float32 terms may meet inf * 0 where float64 had -inf, so any infinite input may
    nonfinite = any(v is not None and not np.isfinite(v).all() for v in rest.values())
    status, res = outcome(lambda: ops.log_importance_weights(x.value, out.value, log_prior.value, log_proposal.value,
                                                             likelihood=likelihood, decoder_logvar=val(out_logvar),
                                                             variance=variance), arrays, expect=e,
                          numerical_failure="decoder_out" if nonfinite else None)
    if status == "rejected":
        return
    check_output(res, kind=kind, dtype=dtype, shape=(B, m), what="log_w")
    logvar = rest.get("decoder_logvar")
    if logvar is None:
        logvar = np.full(rest["decoder_out"].shape, math.log(variance or 1.0))
    scale = np.stack([rec_scale(xv, rest["decoder_out"][:, j], logvar[:, j], likelihood) for j in range(m)], 1) \
        if m else np.zeros((B, 0))
    scale = scale + np.abs(rest["log_prior"]) + np.abs(rest["log_proposal"])
    over = np.stack([term_overflows(xv, rest["decoder_out"][:, j], logvar[:, j], likelihood, dtype).any(1)
                     for j in range(m)], 1) if m else np.zeros((B, 0), bool)
    assert_close(res, want, dtype=dtype, what="log_w", scale=scale, inf_ok=over)
