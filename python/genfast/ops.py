"""Functional kernels: numpy arrays or torch tensors (CPU or CUDA) in, the same kind out.

Every op takes a single problem (2-d inputs) or a batch of independent problems with a
leading batch dimension (3-d inputs), validates its arguments once and dispatches to the
compiled backend (see genfast._backend). The ops are not differentiable: torch inputs are
detached.
"""

from __future__ import annotations

import numpy as np

from . import _backend as be

__all__ = ["kmeans_assign", "kmeans_update", "kmeans_lloyd_step"]


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
        Reject NaN/inf inputs with a ValueError (costs one pass and, on CUDA, one sync).

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
        torch = be._torch()
        workspace = torch.empty(cuda.kmeans_update_workspace_bytes(B, N, K, device=device), dtype=torch.uint8,
                                device=X3.device)
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
