"""Functional kernels: numpy arrays or torch tensors (CPU or CUDA) in, the same kind out.

Every op takes a single problem (2-d inputs) or a batch of independent problems with a
leading batch dimension (3-d inputs), validates its arguments once and dispatches to the
compiled backend (see genfast._backend). The ops are not differentiable: torch inputs are
detached.
"""

from __future__ import annotations

import numpy as np

from . import _backend as be

__all__ = ["kmeans_assign", "kmeans_update"]


def _as_batched(name: str, x, what: str):
    """View a 2-d (N, D) or 3-d (B, N, D) input as 3-d; return (view, was_batched)."""
    if x.ndim == 2:
        return x[None], False
    if x.ndim == 3:
        return x, True
    raise ValueError(f"{name} must be 2-d {what} or 3-d (B, {what[1:]}, got {x.ndim}-d with shape {tuple(x.shape)}")


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
    place = be.placement_of("X", X)
    be.same_placement("X", place, "C", C)
    X = be.as_float("X", X, check_finite=check_finite)
    C = be.as_float("C", C, dtype=be.dtype_name(X), check_finite=check_finite)
    X3, batched = _as_batched("X", X, "(N, D)")
    if C.ndim != X.ndim:
        raise ValueError(
            f"C must have the same number of dimensions as X ({X.ndim}-d), got shape {tuple(C.shape)}"
        )
    C3 = C[None] if not batched else C
    B, N, D = X3.shape
    if C3.shape[0] != B:
        raise ValueError(f"C has batch size {C3.shape[0]} but X has batch size {B}")
    if C3.shape[2] != D:
        raise ValueError(f"C has {C3.shape[2]} features but X has {D}; they must match")
    if D < 1:
        raise ValueError("X must have at least one feature (D >= 1)")
    K = C3.shape[1]
    if K < 1:
        raise ValueError("C must hold at least one centre (K >= 1)")

    dtype = be.dtype_name(X3)
    labels = be.empty(place, (B, N), "int64")
    sq_dist = be.empty(place, (B, N), dtype)
    if place.cuda:
        cuda = be.require_cuda()
        device, stream = be.cuda_launch_args(X3)
        cuda.kmeans_assign(X3.data_ptr(), C3.data_ptr(), labels.data_ptr(), sq_dist.data_ptr(),
                           B, N, K, D, dtype, device, stream)
    else:
        be._core.kmeans_assign(be.host_view(X3), be.host_view(C3), be.host_view(labels),
                               be.host_view(sq_dist))
    if not batched:
        return labels[0], sq_dist[0]
    return labels, sq_dist


def kmeans_update(X, labels, n_clusters: int, sample_weight=None, *, return_means: bool = True,
                  check_finite: bool = True):
    """Per-cluster weighted means (or sums) of the points, and the total weight per cluster.

    Parameters
    ----------
    X : array or tensor, shape (N, D) or (B, N, D)
    labels : integer array or tensor, shape (N,) or (B, N), values in [0, n_clusters)
    n_clusters : int >= 1
    sample_weight : array or tensor, shape (N,) or (B, N), optional
        Non-negative weights (default: all ones).
    return_means : bool, default True
        Return weighted means; a cluster with zero total weight gets a row of zeros (test
        ``weights == 0`` to find such clusters). False returns the weighted sums instead.

    Returns
    -------
    centers_or_sums : X's dtype, shape (K, D) or (B, K, D)
    weights : X's dtype, shape (K,) or (B, K)

    Sums are accumulated in float64 in point order per cluster, so the result does not
    depend on the number of threads.
    """
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)):
        raise TypeError(f"n_clusters must be an int, got {type(n_clusters).__name__}")
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
    place = be.placement_of("X", X)
    be.same_placement("X", place, "labels", labels)
    X = be.as_float("X", X, check_finite=check_finite)
    X3, batched = _as_batched("X", X, "(N, D)")
    B, N, D = X3.shape
    labels = be.as_labels("labels", labels)
    expected = (B, N) if batched else (N,)
    if tuple(labels.shape) != expected:
        raise ValueError(f"labels must have shape {expected} to match X, got {tuple(labels.shape)}")
    labels3 = labels.reshape(B, N)
    _check_label_range(labels3, n_clusters)

    dtype = be.dtype_name(X3)
    weights3 = None
    if sample_weight is not None:
        be.same_placement("X", place, "sample_weight", sample_weight)
        w = be.as_float("sample_weight", sample_weight, dtype=dtype, check_finite=True)
        if tuple(w.shape) not in ((N,), (B, N)):
            raise ValueError(
                f"sample_weight must have shape {(N,)}" + (f" or {(B, N)}" if batched else "")
                + f" to match X, got {tuple(w.shape)}"
            )
        if bool((w < 0).any()):
            raise ValueError("sample_weight must be non-negative")
        weights3 = w.reshape(-1, N).expand(B, N) if be.is_torch(w) else np.broadcast_to(w.reshape(-1, N), (B, N))
        weights3 = weights3.contiguous() if be.is_torch(w) else np.ascontiguousarray(weights3)

    sums = be.empty(place, (B, n_clusters, D), dtype)
    wsum = be.empty(place, (B, n_clusters), dtype)
    if place.cuda:
        cuda = be.require_cuda()
        device, stream = be.cuda_launch_args(X3)
        torch = be._torch()
        workspace = torch.empty(cuda.kmeans_update_workspace_bytes(B, N, n_clusters),
                                dtype=torch.uint8, device=X3.device)
        cuda.kmeans_update(X3.data_ptr(), labels3.data_ptr(),
                           0 if weights3 is None else weights3.data_ptr(),
                           sums.data_ptr(), wsum.data_ptr(), workspace.data_ptr(), workspace.numel(),
                           B, N, n_clusters, D, dtype, device, stream)
    else:
        be._core.kmeans_update(be.host_view(X3), be.host_view(labels3),
                               None if weights3 is None else be.host_view(weights3),
                               be.host_view(sums), be.host_view(wsum))
    out = _means(sums, wsum) if return_means else sums
    if not batched:
        return out[0], wsum[0]
    return out, wsum


def _check_label_range(labels, n_clusters: int) -> None:
    if (labels.numel() if be.is_torch(labels) else labels.size) == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())  # one device sync for CUDA tensors
    if lo < 0 or hi >= n_clusters:
        raise ValueError(f"labels must lie in [0, n_clusters={n_clusters}), found values in [{lo}, {hi}]")


def _means(sums, wsum):
    """sums / wsum per cluster; a cluster with zero weight keeps a row of zeros."""
    denom = wsum[..., None]
    if be.is_torch(sums):
        torch = be._torch()
        return torch.where(denom > 0, sums / torch.where(denom > 0, denom, 1), torch.zeros_like(sums))
    safe = np.where(denom > 0, denom, 1)
    return np.where(denom > 0, sums / safe, 0).astype(sums.dtype, copy=False)
