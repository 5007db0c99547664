"""Functional kernels: numpy arrays or torch tensors (CPU or CUDA) in, the same kind out.

Every op takes a single problem (2-d inputs) or a batch of independent problems with a
leading batch dimension (3-d inputs), validates its arguments once and dispatches to the
compiled backend (see genfast._backend). The ops are not differentiable: torch inputs are
detached.
"""

from __future__ import annotations

import math

import numpy as np

from . import _backend as be
from ._pooling import pooled_statistics

__all__ = ["kmeans_assign", "kmeans_update", "kmeans_lloyd_step", "gmm_log_resp", "gmm_suff_stats",
           "gmm_em_step", "elbo"]

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


# ----------------------------------------------------------------------------- validation
def _points(X, check_finite):
    """(placement, X as 3-d (B, N, D), whether X was batched)."""
    place = be.placement_of("X", X)
    X = be.as_float("X", X, check_finite=check_finite)
    if X.ndim not in (2, 3):
        raise ValueError(f"X must be 2-d (N, D) or 3-d (B, N, D), got {X.ndim}-d with shape {tuple(X.shape)}")
    if X.shape[-1] < 1:
        raise ValueError("X must have at least one feature (D >= 1)")
    if X.shape[-2] < 1 or (X.ndim == 3 and X.shape[0] < 1):
        raise ValueError(f"X is empty (shape {tuple(X.shape)}); it must hold at least one point")
    return place, (X if X.ndim == 3 else X[None]), X.ndim == 3


def _centers(C, place, X3, batched, check_finite):
    """C as 3-d (B, K, D), with X's dtype, checked against X."""
    be.same_placement("X", place, "C", C)
    C = be.as_float("C", C, dtype=be.dtype_name(X3), check_finite=check_finite)
    if C.ndim != 2 + batched:
        raise ValueError(f"C must be {2 + batched}-d like X, got shape {tuple(C.shape)}")
    C3 = C if batched else C[None]
    B, _, D = X3.shape
    if C3.shape[0] != B:
        raise ValueError(f"C has batch size {C3.shape[0]} but X has batch size {B}")
    if C3.shape[2] != D:
        raise ValueError(f"C has {C3.shape[2]} features but X has {D}; they must match")
    if C3.shape[1] < 1:
        raise ValueError("C must hold at least one centre (K >= 1)")
    return C3


def _distance_range(name, A, D, headroom=1.0):
    """Raise ValueError naming `name` unless max |A| <= sqrt(max(dtype) / (4 D)) / headroom:
    then every squared distance between such points, sum_d (x_d - c_d)^2 <= D (2 max|A|)^2,
    and the kernel's expanded form ||c||^2 - 2 x.c are finite in A's dtype (float32: about
    9.2e18 / sqrt(D)); beyond it a centre at distance 0 can lose to one at distance inf.
    headroom: for data that is transformed before the kernels see it (KMeans centres it,
    which can double the magnitudes)."""
    finfo = np.finfo(be.dtype_name(A))
    limit = math.sqrt(float(finfo.max) / (4 * D)) / headroom
    if (A.numel() if be.is_torch(A) else A.size) == 0:
        return
    # max |A| from the two reductions: no |A| temporary the size of A (KMeans' memory bound)
    lo, hi = A.aminmax() if be.is_torch(A) else (A.min(), A.max())
    largest = max(float(hi), -float(lo))
    if largest > limit:
        raise ValueError(f"{name} holds values up to {largest:.3g} in magnitude; {be.dtype_name(A)} squared "
                         f"distances over {D} features overflow beyond {limit:.3g}: pass float64 data or rescale")


def _labels(labels, place, X3, batched, n_clusters):
    """labels as int64 (B, N), checked to lie in [0, n_clusters)."""
    be.same_placement("X", place, "labels", labels)
    labels = be.as_labels("labels", labels)
    B, N, _ = X3.shape
    expected = (B, N) if batched else (N,)
    if tuple(labels.shape) != expected:
        raise ValueError(f"labels must have shape {expected} to match X, got {tuple(labels.shape)}")
    lo, hi = int(labels.min()), int(labels.max())  # one device sync for CUDA tensors
    if lo < 0 or hi >= n_clusters:
        raise ValueError(f"labels must lie in [0, n_clusters={n_clusters}), found values in [{lo}, {hi}]")
    return labels.reshape(B, N)


def _weights(sample_weight, place, X3, batched):
    """sample_weight as (B, N) with X's dtype (a (N,) vector is shared by every problem)."""
    if sample_weight is None:
        return None
    be.same_placement("X", place, "sample_weight", sample_weight)
    w = be.as_float("sample_weight", sample_weight, dtype=be.dtype_name(X3), check_finite=True)
    B, N, _ = X3.shape
    if tuple(w.shape) not in ((N,), (B, N)):
        raise ValueError(f"sample_weight must have shape {(N,)}" + (f" or {(B, N)}" if batched else "")
                         + f" to match X, got {tuple(w.shape)}")
    if bool((w < 0).any()):
        raise ValueError("sample_weight must be non-negative")
    # the weights per cluster are returned in X's dtype: their total must fit it (else inf / inf)
    total = float((w.double() if be.is_torch(w) else w.astype(np.float64)).sum(-1).max())  # N >= 1 here
    if total > float(np.finfo(be.dtype_name(X3)).max):
        raise ValueError(f"sample_weight sums to {total:.3g}, beyond {be.dtype_name(X3)}'s range: rescale the weights")
    if be.is_torch(w):
        return w.reshape(-1, N).expand(B, N).contiguous()
    return np.ascontiguousarray(np.broadcast_to(w.reshape(-1, N), (B, N)))


def _n_clusters(n_clusters):
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)):
        raise TypeError(f"n_clusters must be an int, got {type(n_clusters).__name__}")
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
    return int(n_clusters)


def _means(sums, wsum):
    """sums / wsum per cluster; a cluster with zero weight keeps a row of zeros."""
    denom = wsum[..., None]
    if be.is_torch(sums):
        torch = be._torch()
        return torch.where(denom > 0, sums / torch.where(denom > 0, denom, 1), torch.zeros_like(sums))
    return np.where(denom > 0, sums / np.where(denom > 0, denom, 1), 0).astype(sums.dtype, copy=False)


def _unbatch(batched, *arrays):
    return arrays if batched else tuple(a[0] for a in arrays)


# ----------------------------------------------------------------------------- ops
def kmeans_assign(X, C, *, check_finite: bool = True):
    """Nearest centre of every point and the squared distance to it.

    Parameters
    ----------
    X : array or tensor, shape (N, D) or (B, N, D)
        Points. float32 stays float32; integers are converted to float64.
    C : array or tensor, shape (K, D) or (B, K, D)
        Centres, on the same backend/device as X (converted to X's float dtype).
    check_finite : bool, default True
        Reject NaN/inf inputs with a ValueError, and values whose squared distances would
        overflow X's dtype (max |value| > sqrt(max(dtype) / (4 D)): about 9e18 / sqrt(D) in
        float32). Costs two passes and, on CUDA, two syncs.

    Returns
    -------
    labels : int64, shape (N,) or (B, N)
        Index of the nearest centre; ties break to the lowest index.
    sq_dist : X's dtype, shape (N,) or (B, N)
        Squared Euclidean distance to that centre, summed directly as sum (x - c)^2
        (no cancellation in float32).

    The N x K distance matrix is never formed: distances are computed in register tiles and
    reduced to the argmin on the fly.
    """
    place, X3, batched = _points(X, check_finite)
    C3 = _centers(C, place, X3, batched, check_finite)
    if check_finite:
        _distance_range("X", X3, X3.shape[2])
        _distance_range("C", C3, X3.shape[2])
    (B, N, D), K = X3.shape, C3.shape[1]
    labels = be.empty(place, (B, N), "int64")
    sq_dist = be.empty(place, (B, N), be.dtype_name(X3))
    if place.cuda:
        cuda = be.require_cuda()
        device, stream = be.cuda_launch_args(X3)
        cuda.kmeans_assign(X3.data_ptr(), C3.data_ptr(), labels.data_ptr(), sq_dist.data_ptr(),
                           B, N, K, D, be.dtype_name(X3), device, stream)
    else:
        be._core.kmeans_assign(be.host_view(X3), be.host_view(C3), be.host_view(labels),
                               be.host_view(sq_dist))
    return _unbatch(batched, labels, sq_dist)


def kmeans_update(X, labels, n_clusters: int, sample_weight=None, *, return_means: bool = True,
                  check_finite: bool = True):
    """Per-cluster weighted means (or sums) of the points, and the total weight per cluster.

    Parameters
    ----------
    X : array or tensor, shape (N, D) or (B, N, D)
    labels : integer array or tensor, shape (N,) or (B, N), values in [0, n_clusters)
    n_clusters : int >= 1
    sample_weight : array or tensor, shape (N,) or (B, N), optional
        Non-negative weights (default: all ones); a (N,) vector applies to every problem.
    return_means : bool, default True
        Return weighted means; a cluster with zero total weight gets a row of zeros (test
        ``weights == 0`` to find such clusters). False returns the weighted sums instead.

    Returns
    -------
    centers_or_sums : X's dtype, shape (K, D) or (B, K, D)
    weights : X's dtype, shape (K,) or (B, K)

    Sums are accumulated in float64 over fixed blocks of points combined in a fixed order,
    so the result does not depend on the number of threads.
    """
    K = _n_clusters(n_clusters)
    place, X3, batched = _points(X, check_finite)
    labels3 = _labels(labels, place, X3, batched, K)
    weights3 = _weights(sample_weight, place, X3, batched)
    (B, N, D), dtype = X3.shape, be.dtype_name(X3)
    sums = be.empty(place, (B, K, D), dtype)
    wsum = be.empty(place, (B, K), dtype)
    if place.cuda:
        cuda = be.require_cuda()
        device, stream = be.cuda_launch_args(X3)
        workspace = be.cuda_workspace(cuda.kmeans_update_workspace_bytes(B, N, K, device=device), X3)
        cuda.kmeans_update(X3.data_ptr(), labels3.data_ptr(),
                           0 if weights3 is None else weights3.data_ptr(),
                           sums.data_ptr(), wsum.data_ptr(), workspace.data_ptr(), workspace.numel(),
                           B, N, K, D, dtype, device, stream)
    else:
        be._core.kmeans_update(be.host_view(X3), be.host_view(labels3),
                               None if weights3 is None else be.host_view(weights3),
                               be.host_view(sums), be.host_view(wsum))
    return _unbatch(batched, _means(sums, wsum) if return_means else sums, wsum)


def kmeans_lloyd_step(X, C, sample_weight=None, *, return_means: bool = True,
                      check_finite: bool = True):
    """One Lloyd iteration: ``kmeans_assign(X, C)`` then ``kmeans_update`` of that assignment.

    On the CPU both run in a single pass over X (each block of points is summed while it is
    still in cache); the results are bitwise the same as the two separate calls.

    Returns
    -------
    labels, sq_dist : as kmeans_assign (against C)
    centers_or_sums, weights : as kmeans_update (of the new labels)
    """
    place, X3, batched = _points(X, check_finite)
    C3 = _centers(C, place, X3, batched, check_finite)
    if check_finite:
        _distance_range("X", X3, X3.shape[2])
        _distance_range("C", C3, X3.shape[2])
    weights3 = _weights(sample_weight, place, X3, batched)
    if place.cuda:
        labels, sq_dist = kmeans_assign(X3, C3, check_finite=False)
        sums, wsum = kmeans_update(X3, labels, C3.shape[1], weights3, return_means=False,
                                   check_finite=False)
    else:
        (B, N, D), K, dtype = X3.shape, C3.shape[1], be.dtype_name(X3)
        labels = be.empty(place, (B, N), "int64")
        sq_dist = be.empty(place, (B, N), dtype)
        sums = be.empty(place, (B, K, D), dtype)
        wsum = be.empty(place, (B, K), dtype)
        be._core.kmeans_lloyd_step(be.host_view(X3), be.host_view(C3),
                                   None if weights3 is None else be.host_view(weights3),
                                   be.host_view(labels), be.host_view(sq_dist),
                                   be.host_view(sums), be.host_view(wsum))
    return _unbatch(batched, labels, sq_dist, _means(sums, wsum) if return_means else sums, wsum)


# ----------------------------------------------------------------------------- Gaussian mixtures
def _covariance_type(covariance_type):
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}")
    return covariance_type


def _covariance_shape(covariance_type, K, D):
    """Shape of the precision factors (and of the scatter) for each covariance type."""
    return {"full": (K, D, D), "tied": (D, D), "diag": (K, D), "spherical": (K,)}[covariance_type]


def _points_2d(X, check_finite):
    """(placement, X as 2-d (N, D)) for the Gaussian-mixture ops (no batch dimension)."""
    place, X3, batched = _points(X, check_finite)
    if batched:
        raise ValueError(f"X must be 2-d (N, D), got shape {tuple(X3.shape)}")
    return place, X3[0]


def _param(name, value, place, dtype, shape, check_finite=True):
    """A parameter array with X's dtype and placement, checked to have `shape`."""
    be.same_placement("X", place, name, value)
    value = be.as_float(name, value, dtype=dtype, check_finite=check_finite)
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(value.shape)}")
    return value


def _mixture(X, weights, means, precisions_cholesky, covariance_type, check_finite):
    """(placement, X (N, D), weights, means, factors, covariance type) checked against each
    other, with X's dtype and placement."""
    cov = _covariance_type(covariance_type)
    place, X2 = _points_2d(X, check_finite)
    D, dtype = X2.shape[1], be.dtype_name(X2)
    be.same_placement("X", place, "means", means)
    means = be.as_float("means", means, dtype=dtype, check_finite=check_finite)
    if means.ndim != 2 or means.shape[1] != D or means.shape[0] < 1:
        raise ValueError(f"means must have shape (K, {D}) with K >= 1, got {tuple(means.shape)}")
    K = means.shape[0]
    weights = _param("weights", weights, place, dtype, (K,), check_finite)
    prec = _param("precisions_cholesky", precisions_cholesky, place, dtype,
                  _covariance_shape(cov, K, D), check_finite)
    return place, X2, weights, means, prec, cov


def gmm_log_resp(X, weights, means, precisions_cholesky, covariance_type, *,
                 return_log_resp: bool = False, check_finite: bool = True):
    """Gaussian-mixture E-step: per-sample log-likelihood, optionally log-responsibilities.

    log p(x_n) = logsumexp_k [log w_k - D/2 log(2 pi) + log det P_k - 1/2 ||(x_n - mu_k)^T P_k||^2]
    in one fused pass over tiles of points; the (N, K) matrix is only formed when asked for.

    Parameters
    ----------
    X : (N, D) array or tensor (float32 stays float32)
    weights : (K,) non-negative mixture weights
    means : (K, D)
    precisions_cholesky : scikit-learn's ``precisions_cholesky_``: upper-triangular factors P
        with precision = P P^T; full (K, D, D), tied (D, D), diag (K, D), spherical (K,).
    covariance_type : 'full', 'tied', 'diag' or 'spherical'
    return_log_resp : also return log p(k | x_n), shape (N, K)

    Returns
    -------
    log_prob : (N,), or (log_prob, log_resp) when return_log_resp. A point whose every
    component has probability 0 gets log_prob -inf and log_resp -inf (never NaN).

    The weights and factors are checked before anything is written (for CUDA tensors on the
    device, with one wait for the current stream): a negative weight, or a factor that is not
    upper triangular with a positive diagonal, raises the same ValueError on every backend.
    """
    place, X2, weights, means, prec, cov = _mixture(X, weights, means, precisions_cholesky,
                                                    covariance_type, check_finite)
    (N, D), K, dtype = X2.shape, means.shape[0], be.dtype_name(X2)
    log_prob = be.empty(place, (N,), dtype)
    log_resp = be.empty(place, (N, K), dtype) if return_log_resp else None
    if place.cuda:
        cuda = be.require_cuda()
        device, stream = be.cuda_launch_args(X2)
        workspace = be.cuda_workspace(cuda.gmm_log_resp_workspace_bytes(K), X2)
        cuda.gmm_log_resp(X2.data_ptr(), weights.data_ptr(), means.data_ptr(), prec.data_ptr(), cov,
                          log_prob.data_ptr(), 0 if log_resp is None else log_resp.data_ptr(),
                          workspace.data_ptr(), workspace.numel(), N, K, D, dtype, device, stream)
    else:
        be._core.gmm_log_resp(be.host_view(X2), be.host_view(weights), be.host_view(means),
                              be.host_view(prec), cov, be.host_view(log_prob),
                              None if log_resp is None else be.host_view(log_resp))
    return (log_prob, log_resp) if return_log_resp else log_prob


def gmm_em_step(X, weights, means, precisions_cholesky, covariance_type, *, check_finite: bool = True):
    """One EM iteration's statistics in one pass over X, without the (N, K) responsibilities.

    Equal (up to rounding) to ``gmm_log_resp(..., return_log_resp=True)`` followed by
    ``gmm_suff_stats(X, log_resp, covariance_type, log=True)``, in O(N + K D^2) memory: each
    tile of points gets its responsibilities and adds them into the statistics at once. The
    scatter is accumulated in float64 about the current means and moved exactly to the new
    ones, so it stays centred (float32 data far from the origin keeps positive variances).
    Where a new mean lies far from its current one (beyond 8 standard deviations in float32,
    90 in float64, or where the squares overflow), the statistics are summed again about the
    new means, up to four passes over X in all; the tied scatter is summed about each point's
    most responsible component, so an outlier anywhere cannot cancel the other points'.

    Parameters are those of `gmm_log_resp`.

    Returns
    -------
    log_prob : (N,) log p(x_n) under the given parameters (the lower bound is its mean)
    nk, sums, scatter : as `gmm_suff_stats` returns them for the responsibilities of these
        parameters; bitwise the same for any number of threads.
    """
    place, X2, weights, means, prec, cov = _mixture(X, weights, means, precisions_cholesky,
                                                    covariance_type, check_finite)
    if place.cuda:  # no fused CUDA kernel
        return _em_step_in_pieces(place, X2, weights, means, prec, cov)
    (N, D), K, dtype = X2.shape, means.shape[0], be.dtype_name(X2)
    log_prob = be.empty(place, (N,), dtype)
    nk = be.empty(place, (K,), dtype)
    sums = be.empty(place, (K, D), dtype)
    scatter = be.empty(place, _covariance_shape(cov, K, D), dtype)
    be._core.gmm_em_step(be.host_view(X2), be.host_view(weights), be.host_view(means),
                         be.host_view(prec), cov, be.host_view(log_prob), be.host_view(nk),
                         be.host_view(sums), be.host_view(scatter))
    return log_prob, nk, sums, scatter


#: Bytes of (rows, K) log-responsibilities per piece in _em_step_in_pieces.
_EM_PIECE_BYTES = 256 << 20


def _em_step_in_pieces(place, X2, weights, means, prec, cov, piece_bytes=_EM_PIECE_BYTES):
    """gmm_em_step as gmm_log_resp then gmm_suff_stats (for a backend without the fused
    kernel), a piece of rows at a time so that the (N, K) log-responsibilities never exist at
    once; the pieces' statistics are pooled exactly in float64 on the host (genfast._pooling)
    and returned in X's dtype and placement."""
    (N, _), K, dtype = X2.shape, means.shape[0], be.dtype_name(X2)
    rows = max(1, piece_bytes // (K * np.dtype(dtype).itemsize))
    log_prob = be.empty(place, (N,), dtype)
    parts = []
    for i0 in range(0, N, rows):
        piece = X2[i0:i0 + rows]
        log_prob[i0:i0 + rows], log_resp = gmm_log_resp(piece, weights, means, prec, cov, return_log_resp=True,
                                                        check_finite=False)
        stats = gmm_suff_stats(piece, log_resp, cov, log=True, check_finite=False)
        parts.append([be.to_numpy(s).astype(np.float64) for s in stats])
    stats = parts[0] if len(parts) == 1 else pooled_statistics(parts, cov)
    return (log_prob, *(be.from_numpy(np.asarray(s).astype(dtype), place) for s in stats))


def gmm_suff_stats(X, resp, covariance_type, *, log: bool = False, check_finite: bool = True):
    """Gaussian-mixture M-step statistics, accumulated in float64, centred.

    Parameters
    ----------
    X : (N, D) array or tensor
    resp : (N, K) responsibilities r_nk >= 0, or log-responsibilities when ``log=True``
    covariance_type : 'full', 'tied', 'diag' or 'spherical'

    Returns
    -------
    nk : (K,) sum_n r_nk
    sums : (K, D) sum_n r_nk x_n
    scatter : sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T about mu_k = sums_k / (nk_k + 10 eps),
        summed in a second pass (never E[x x^T] - mu mu^T, so float32 data far from the origin
        keeps positive variances): full (K, D, D); tied (D, D), summed over components;
        diag (K, D), its diagonal; spherical (K,), its trace.
    Sums run over fixed blocks of points added in a fixed order (no floating-point atomics),
    so the results are bitwise the same for any number of CPU threads and from run to run on
    a GPU.
    """
    cov = _covariance_type(covariance_type)
    place, X2 = _points_2d(X, check_finite)
    (N, D), dtype = X2.shape, be.dtype_name(X2)
    be.same_placement("X", place, "resp", resp)
    # log-responsibilities may hold -inf (probability 0); NaN and +inf are never valid.
    resp = be.as_float("resp", resp, dtype=dtype, check_finite=check_finite and not log)
    if resp.ndim != 2 or resp.shape[0] != N or resp.shape[1] < 1:
        raise ValueError(f"resp must have shape ({N}, K) with K >= 1 to match X, got {tuple(resp.shape)}")
    if bool((resp != resp).any()) or bool((resp == float("inf")).any()):
        raise ValueError("resp contains NaN or +infinity")
    if not log and bool((resp < 0).any()):
        raise ValueError("resp must be non-negative (pass log=True for log-responsibilities)")
    K = resp.shape[1]
    nk = be.empty(place, (K,), dtype)
    sums = be.empty(place, (K, D), dtype)
    scatter = be.empty(place, _covariance_shape(cov, K, D), dtype)
    if place.cuda:
        cuda = be.require_cuda()
        device, stream = be.cuda_launch_args(X2)
        workspace = be.cuda_workspace(cuda.gmm_suff_stats_workspace_bytes(N, K, D, cov), X2)
        cuda.gmm_suff_stats(X2.data_ptr(), resp.data_ptr(), bool(log), cov, nk.data_ptr(), sums.data_ptr(),
                            scatter.data_ptr(), workspace.data_ptr(), workspace.numel(), N, K, D, dtype,
                            device, stream)
    else:
        be._core.gmm_suff_stats(be.host_view(X2), be.host_view(resp), bool(log), cov,
                                be.host_view(nk), be.host_view(sums), be.host_view(scatter))
    return nk, sums, scatter


# ----------------------------------------------------------------------------- VAE ELBO
LIKELIHOODS = ("bernoulli", "gaussian")
#: The ELBO kernel's inputs, in the order of its gradient outputs.
ELBO_INPUTS = ("x", "decoder_out", "decoder_logvar", "mu", "logvar")


def elbo_shapes(x, decoder_out, decoder_logvar, mu, logvar):
    """(B, D, L) of an ELBO call whose data arrays are 2-d: x, decoder_out and decoder_logvar
    (B, D), mu and logvar (B, L); any may be None, and D or L is 0 when all of its arrays are.
    Raises ValueError naming the first argument that does not fit."""
    data = [(n, a) for n, a in (("x", x), ("decoder_out", decoder_out), ("decoder_logvar", decoder_logvar))
            if a is not None]
    latent = [(n, a) for n, a in (("mu", mu), ("logvar", logvar)) if a is not None]
    for group, width in ((data, "D"), (latent, "L")):
        for name, a in group:
            if a.ndim != 2:
                raise ValueError(f"{name} must be 2-d (B, {width}), got shape {tuple(a.shape)}")
    ref_name, ref = (data + latent)[0]
    for group in (data, latent):
        for name, a in group:
            if tuple(a.shape) != tuple(group[0][1].shape):
                raise ValueError(f"{name} has shape {tuple(a.shape)} but {group[0][0]} has "
                                 f"{tuple(group[0][1].shape)}; they must match")
            if a.shape[0] != ref.shape[0]:
                raise ValueError(f"{name} holds {a.shape[0]} samples but {ref_name} holds "
                                 f"{ref.shape[0]}; they must match")
    return ref.shape[0], (data[0][1].shape[1] if data else 0), (latent[0][1].shape[1] if latent else 0)


def gaussian_fixed_logvar(likelihood, decoder_logvar, variance) -> float:
    """The fixed log-variance the kernel uses when there is no per-element decoder_logvar:
    log(variance) (default variance 1) for a Gaussian, 0 (unused) for a Bernoulli. Raises
    ValueError for an unknown likelihood or a variance that does not fit it."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    if likelihood == "bernoulli":
        if decoder_logvar is not None or variance is not None:
            raise ValueError("the Bernoulli likelihood takes no decoder_logvar or variance")
        return 0.0
    if decoder_logvar is not None and variance is not None:
        raise ValueError("give the Gaussian either a per-element decoder_logvar or a fixed variance, not both")
    if variance is None:
        return 0.0
    if isinstance(variance, bool) or not isinstance(variance, (int, float, np.floating, np.integer)):
        raise TypeError(f"variance must be a positive number, got {type(variance).__name__}")
    if not (math.isfinite(variance) and variance > 0):
        raise ValueError(f"variance must be positive and finite, got {variance}")
    return math.log(variance)


def check_beta(beta) -> float:
    """beta as a float, after checking it is a finite number >= 0."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float, np.floating, np.integer)):
        raise TypeError(f"beta must be a number, got {type(beta).__name__}")
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be finite and >= 0, got {beta}")
    return float(beta)


def _elbo_kernel(arrays: dict, outputs: dict, *, likelihood: str, fixed_logvar: float, beta: float,
                 rec_scale: float = 1.0, kl_scale: float = 1.0) -> None:
    """Runs the fused ELBO kernel: `arrays` maps ELBO_INPUTS to C-contiguous arrays (None when
    absent), `outputs` maps elbo / rec / kl / grad_<input> to preallocated outputs, all of one
    dtype on one device (numpy or CPU tensors: _core; CUDA tensors: _cuda on the current
    stream). The gradients are those of sum_b (rec_scale rec_b + kl_scale kl_b)."""
    first = next(a for a in arrays.values() if a is not None)
    if be.placement_of("x", first).cuda:
        cuda = be.require_cuda()
        device, stream = be.cuda_launch_args(first)
        B, D, L = elbo_shapes(**arrays)
        ptr = lambda a: 0 if a is None else a.data_ptr()  # noqa: E731
        cuda.elbo(*(ptr(arrays[n]) for n in ELBO_INPUTS), likelihood, fixed_logvar, beta, rec_scale,
                  kl_scale, *(ptr(outputs.get(n)) for n in ("elbo", "rec", "kl")),
                  *(ptr(outputs.get("grad_" + n)) for n in ELBO_INPUTS), B, D, L,
                  be.dtype_name(first), device, stream)
    else:
        host = lambda a: None if a is None else be.host_view(a)  # noqa: E731
        be._core.elbo(**{n: host(a) for n, a in arrays.items()}, likelihood=likelihood,
                      fixed_logvar=fixed_logvar, beta=beta, rec_scale=rec_scale, kl_scale=kl_scale,
                      **{n: host(a) for n, a in outputs.items()})


def _scale_rows_kernel(rows, weight, out) -> None:
    """out[b] = weight[b] rows[b] for C-contiguous 2-d rows/out and 1-d weight of one dtype."""
    if be.placement_of("rows", rows).cuda:
        cuda = be.require_cuda()
        device, stream = be.cuda_launch_args(rows)
        cuda.elbo_scale_rows(rows.data_ptr(), weight.data_ptr(), out.data_ptr(), rows.shape[0],
                             rows.shape[1], be.dtype_name(rows), device, stream)
    else:
        be._core.elbo_scale_rows(be.host_view(rows), be.host_view(weight), be.host_view(out))


def elbo(x, decoder_out, mu=None, logvar=None, *, likelihood: str = "bernoulli", decoder_logvar=None,
         variance=None, beta: float = 1.0, gradients: bool = False, check_finite: bool = True):
    """Per-sample VAE evidence lower bound in one fused pass (not differentiable; for autograd
    use genfast.torch.elbo).

    ELBO_b = rec_b - beta kl_b, with rec_b = sum_d log p(x_bd | decoder_out_bd) and
    kl_b = KL(N(mu_b, exp(logvar_b)) || N(0, I)) = 1/2 sum_l (mu^2 + exp(logvar) - logvar - 1).

    Parameters
    ----------
    x : (B, D) array or tensor (float32 stays float32; integers become float64)
    decoder_out : (B, D) Bernoulli logits, or Gaussian means
    mu, logvar : (B, L) posterior means and log-variances, or None for no KL term
    likelihood : 'bernoulli' (stable softplus form, finite for any logit) or 'gaussian'
    decoder_logvar : (B, D) per-element Gaussian log-variances, or
    variance : one fixed Gaussian variance (default 1 when neither is given)
    beta : weight of the KL term (>= 0)
    gradients : also return the gradients of sum_b ELBO_b

    Returns
    -------
    elbo, rec, kl : (B,) each, in x's dtype (sums accumulated in float64)
    gradients : only with ``gradients=True``: a dict with the gradient of sum_b ELBO_b for
        'decoder_out', 'mu', 'logvar' and (when given) 'decoder_logvar', shaped as the inputs.
    """
    fixed_logvar = gaussian_fixed_logvar(likelihood, decoder_logvar, variance)
    beta = check_beta(beta)
    place = be.placement_of("x", x)
    x = be.as_float("x", x, check_finite=check_finite)
    dtype = be.dtype_name(x)
    arrays = {"x": x}
    for name, a in (("decoder_out", decoder_out), ("decoder_logvar", decoder_logvar), ("mu", mu), ("logvar", logvar)):
        if a is not None:
            be.same_placement("x", place, name, a)
            arrays[name] = be.as_float(name, a, dtype=dtype, check_finite=check_finite)
        else:
            arrays[name] = None
    if arrays["decoder_out"] is None:
        raise ValueError("decoder_out is required")
    if (arrays["mu"] is None) != (arrays["logvar"] is None):
        raise ValueError("give both mu and logvar, or neither (no KL term)")
    B, _, _ = elbo_shapes(**arrays)
    outputs = {name: be.empty(place, (B,), dtype) for name in ("elbo", "rec", "kl")}
    grads = {name: be.empty(place, tuple(arrays[name].shape), dtype)
             for name in ELBO_INPUTS[1:] if gradients and arrays[name] is not None}
    _elbo_kernel(arrays, {**outputs, **{"grad_" + n: g for n, g in grads.items()}}, likelihood=likelihood,
                 fixed_logvar=fixed_logvar, beta=beta, rec_scale=1.0, kl_scale=-beta)
    values = (outputs["elbo"], outputs["rec"], outputs["kl"])
    return (*values, grads) if gradients else values


# ---------------------------------------------------------------------- Monte Carlo likelihood


def _rows_2d(name, a):
    """a as a C-contiguous float (B, m) array or tensor, where it was."""
    be.placement_of(name, a)
    a = be.as_float(name, a, check_finite=False)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-d (B, m), got shape {tuple(a.shape)}")
    return a


def logmeanexp_stats(a, dim: int = -1):
    """(log_mean, ess, std_error) of the weights exp(a) along `dim`, each with `dim` removed:
    log((1/M) sum_i exp(a_i)), the effective sample size (sum w)^2 / sum w^2, and the
    delta-method standard error of log_mean, sqrt(1/ESS - 1/M). A slice that is all -inf gives
    -inf, ESS 0 and standard error +inf (never NaN). numpy arrays or torch tensors (CPU or
    CUDA), float32 or float64 (results in a's dtype, on a's device; sums accumulated in float64).
    A NaN or +inf in a raises ValueError (on CUDA after one device-to-host copy of a flag)."""
    place = be.placement_of("a", a)
    a = a if be.is_torch(a) else np.asarray(a)  # lists and scalars too, as the other ops take them
    ndim = a.ndim
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not -ndim <= dim < ndim:
        raise ValueError(f"dim must be an int in [-{ndim}, {ndim}) for a with shape {tuple(a.shape)}, got {dim!r}")
    if a.shape[dim] == 0:
        raise ValueError(f"a has no samples along dim {dim} (shape {tuple(a.shape)})")
    moved = a.movedim(dim, -1) if be.is_torch(a) else np.moveaxis(a, dim, -1)
    out_shape = tuple(moved.shape[:-1])
    rows = _rows_2d("a", moved.reshape(-1, moved.shape[-1]))
    if place.cuda:
        acc = _LogMeanExpState(rows.shape[0])
        acc.update(rows)
        return tuple(r.reshape(out_shape) for r in acc.result())
    # On the CPU one kernel does the whole array: no float64 state, one OpenMP region.
    outs = [be.empty(place, rows.shape[:1], be.dtype_name(rows)) for _ in range(3)]
    be._core.mc_logmeanexp(be.host_view(rows), *(be.host_view(o) for o in outs))
    # A NaN or +inf log-weight makes its row's log_mean NaN (a check over B values, not B M).
    if np.isnan(be.host_view(outs[0])).any():
        raise ValueError(_NAN_LOG_WEIGHT.format(name="a"))
    return tuple(r.reshape(out_shape) for r in outs)


def logmeanexp(a, dim: int = -1):
    """log((1/M) sum_i exp(a_i)) along `dim` (M = a.shape[dim]), in one streaming pass; a slice
    that is all -inf gives -inf. Not differentiable: use genfast.torch.logmeanexp for autograd."""
    return logmeanexp_stats(a, dim)[0]


_NAN_LOG_WEIGHT = "{name} contains NaN or +infinity (log-weights may be -inf, never NaN or +inf)"


class _LogMeanExpState:
    """Per-row streaming log-mean-exp state of n_rows rows (float64 max, shifted sum and sum of
    squares), allocated by the first chunk: numpy arrays for numpy or CPU chunks, tensors on the
    chunk's device for CUDA chunks. Results take the first chunk's placement and dtype."""

    def __init__(self, n_rows: int):
        self.n_rows = n_rows
        self.place = self.dtype = None
        self.n_samples = 0

    def _start(self, rows, place) -> None:
        self.place, self.dtype = place, be.dtype_name(rows)
        if place.cuda:
            torch = be._torch()
            self.max = torch.full((self.n_rows,), -math.inf, dtype=torch.float64, device=place.device)
            self.sum, self.sum_sq = (torch.zeros(self.n_rows, dtype=torch.float64, device=place.device)
                                     for _ in range(2))
        else:
            self.max = np.full(self.n_rows, -np.inf)
            self.sum, self.sum_sq = np.zeros(self.n_rows), np.zeros(self.n_rows)

    def update(self, rows, name: str = "a") -> None:
        """Adds a C-contiguous float (n_rows, m) chunk. Raises ValueError naming it when it holds
        NaN or +inf (-inf is a zero weight): the kernel's sums turn NaN then, a check over n_rows
        values (on CUDA, one device-to-host copy of a flag) instead of a pass over the chunk. The
        state is then spoilt. A chunk must be on the first chunk's device (numpy and CPU tensors
        mix)."""
        place = be.placement_of(name, rows)
        if self.place is not None and (place.cuda or self.place.cuda):
            be.same_placement("the first chunk", self.place, name, rows)
        if rows.shape[0] != self.n_rows:
            raise ValueError(f"the chunk has {rows.shape[0]} rows but the accumulator has {self.n_rows}")
        if self.place is None:
            self._start(rows, place)
        if place.cuda:
            cuda = be.require_cuda()
            device, stream = be.cuda_launch_args(rows)
            cuda.mc_logmeanexp_update(rows.data_ptr(), self.max.data_ptr(), self.sum.data_ptr(),
                                      self.sum_sq.data_ptr(), rows.shape[0], rows.shape[1], be.dtype_name(rows),
                                      device, stream)
            finite = bool(be._torch().isfinite(self.sum).all())
        else:
            be._core.mc_logmeanexp_update(be.host_view(rows), self.max, self.sum, self.sum_sq)
            finite = bool(np.isfinite(self.sum).all())
        self.n_samples += rows.shape[1]
        if not finite:
            raise ValueError(_NAN_LOG_WEIGHT.format(name=name))

    def result(self):
        """(log_mean, ess, std_error), each (n_rows,), placed as the first chunk in its dtype."""
        if self.n_samples == 0:
            raise ValueError("no samples were added")
        outs = [be.empty(self.place, (self.n_rows,), self.dtype) for _ in range(3)]
        if self.place.cuda:
            cuda = be.require_cuda()
            device, stream = be.cuda_launch_args(self.max)
            cuda.mc_logmeanexp_finish(float(self.n_samples), self.max.data_ptr(), self.sum.data_ptr(),
                                      self.sum_sq.data_ptr(), *(o.data_ptr() for o in outs), self.n_rows,
                                      self.dtype, device, stream)
        else:
            be._core.mc_logmeanexp_finish(float(self.n_samples), self.max, self.sum, self.sum_sq,
                                          *(be.host_view(o) for o in outs))
        return tuple(outs)


def _importance_shapes(x, arrays):
    """(B, m, D) of log_importance_weights' arguments, after checking that they fit x (B, D)."""
    if x.ndim != 2:
        raise ValueError(f"x must be 2-d (B, D), got shape {tuple(x.shape)}")
    (B, D), out = x.shape, arrays["decoder_out"]
    if out.ndim != 3 or out.shape[0] != B or out.shape[2] != D:
        raise ValueError(f"decoder_out must have shape (B, m, D) = ({B}, m, {D}), got {tuple(out.shape)}")
    m = out.shape[1]
    for name, shape in (("decoder_logvar", (B, m, D)), ("log_prior", (B, m)), ("log_proposal", (B, m))):
        a = arrays.get(name)
        if a is not None and tuple(a.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} to match x and decoder_out, got {tuple(a.shape)}")
    return B, m, D


def log_importance_weights(x, decoder_out, log_prior, log_proposal, *, likelihood: str = "bernoulli",
                           decoder_logvar=None, variance=None, check_finite: bool = True):
    """Log importance weights of m latent draws per data point, fused (no (B, m, D) temporaries):

        log_w[b, j] = sum_d log p(x[b, d] | decoder_out[b, j, d]) + log_prior[b, j] - log_proposal[b, j]

    x (B, D); decoder_out (B, m, D) Bernoulli logits or Gaussian means; decoder_logvar (B, m, D)
    per-element Gaussian log-variances, or one fixed `variance` (default 1); log_prior = log p(z)
    and log_proposal = log q(z | x), (B, m). Returns (B, m) in x's dtype and placement (numpy,
    CPU or CUDA tensors; all arguments on x's device).
    check_finite: x must be finite, and a NaN or +inf log-weight (from NaN or infinite inputs)
    raises ValueError; -inf (a zero weight) is allowed. The (B, m, D) inputs are checked through
    the (B, m) result: a pass over them would cost several times the kernel. On CUDA both checks
    cost one device-to-host copy of two flags, after the kernel."""
    fixed_logvar = gaussian_fixed_logvar(likelihood, decoder_logvar, variance)
    place = be.placement_of("x", x)
    x = be.as_float("x", x, check_finite=check_finite and not place.cuda)
    dtype = be.dtype_name(x)
    arrays = {}
    for name, a in (("decoder_out", decoder_out), ("decoder_logvar", decoder_logvar), ("log_prior", log_prior),
                    ("log_proposal", log_proposal)):
        if a is None and name != "decoder_logvar":
            raise ValueError(f"{name} is required")
        if a is not None:
            be.same_placement("x", place, name, a)
            arrays[name] = be.as_float(name, a, dtype=dtype, check_finite=False)
    B, m, D = _importance_shapes(x, arrays)
    log_w = be.empty(place, (B, m), dtype)
    # a log-weight is NaN or +inf exactly when it is not below +inf
    x_finite = weights_ok = True
    if place.cuda:
        cuda = be.require_cuda()
        device, stream = be.cuda_launch_args(x)
        ptr = lambda name: 0 if arrays.get(name) is None else arrays[name].data_ptr()  # noqa: E731
        cuda.mc_log_importance_weights(x.data_ptr(), ptr("decoder_out"), ptr("decoder_logvar"), likelihood,
                                       fixed_logvar, ptr("log_prior"), ptr("log_proposal"), log_w.data_ptr(),
                                       B, m, D, dtype, device, stream)
        if check_finite:
            torch = be._torch()
            x_finite, weights_ok = torch.stack([torch.isfinite(x).all(), (log_w < math.inf).all()]).tolist()
    else:
        host = lambda name: None if arrays.get(name) is None else be.host_view(arrays[name])  # noqa: E731
        be._core.mc_log_importance_weights(be.host_view(x), host("decoder_out"), host("decoder_logvar"), likelihood,
                                           fixed_logvar, host("log_prior"), host("log_proposal"),
                                           be.host_view(log_w))
        if check_finite:
            weights_ok = bool((be.host_view(log_w) < math.inf).all())
    if not x_finite:
        raise ValueError("x contains NaN or infinity")
    if not weights_ok:
        raise ValueError("decoder_out, decoder_logvar, log_prior or log_proposal contains NaN or infinity "
                         "(a log-weight came out NaN or +inf)")
    return log_w
