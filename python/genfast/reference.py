"""Pure-numpy float64 reference implementations: the obvious code, no cleverness.

This module is the oracle the compiled kernels are tested against. It favours clarity over
speed and memory (kmeans_assign forms the full N x K distance matrix): use it on small inputs.
Every function accepts a leading batch dimension where the matching op does.
"""

from __future__ import annotations

import numpy as np

__all__ = ["kmeans_assign", "kmeans_update", "lloyd_iteration", "inertia", "kmeans_plusplus"]


def kmeans_assign(X, C):
    """(labels, squared distances) of the nearest centre; ties go to the lowest index."""
    X = np.asarray(X, dtype=np.float64)
    C = np.asarray(C, dtype=np.float64)
    if X.ndim == 3:
        out = [kmeans_assign(x, c) for x, c in zip(X, C)]
        return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])
    diff = X[:, None, :] - C[None, :, :]
    sq = (diff * diff).sum(axis=2)  # (N, K)
    labels = np.argmin(sq, axis=1)  # argmin returns the first (lowest) index on ties
    return labels.astype(np.int64), sq[np.arange(X.shape[0]), labels]


def kmeans_update(X, labels, n_clusters, sample_weight=None):
    """(weighted sums (K, D), total weights (K,)) of the points in each cluster."""
    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(labels)
    if X.ndim == 3:
        w = [None] * len(X) if sample_weight is None else np.broadcast_to(sample_weight, labels.shape)
        out = [kmeans_update(x, l, n_clusters, wi) for x, l, wi in zip(X, labels, w)]
        return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])
    w = np.ones(X.shape[0]) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    sums = np.zeros((n_clusters, X.shape[1]))
    np.add.at(sums, labels, w[:, None] * X)
    weights = np.bincount(labels, weights=w, minlength=n_clusters).astype(np.float64)
    return sums, weights


def inertia(X, C, labels, sample_weight=None):
    """sum_i w_i ||x_i - c_{label_i}||^2."""
    X = np.asarray(X, dtype=np.float64)
    C = np.asarray(C, dtype=np.float64)
    w = np.ones(X.shape[0]) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    diff = X - C[labels]
    return float((w * (diff * diff).sum(axis=1)).sum())


def lloyd_iteration(X, C, sample_weight=None):
    """One Lloyd step: assign, then move each centre to the weighted mean of its points.

    A cluster that receives no weight keeps its old centre. Returns (new centres, labels,
    inertia of the assignment against the old centres).
    """
    C = np.asarray(C, dtype=np.float64)
    labels, sq = kmeans_assign(X, C)
    sums, weights = kmeans_update(X, labels, C.shape[0], sample_weight)
    w = np.ones(len(labels)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    new = C.copy()
    nonempty = weights > 0
    new[nonempty] = sums[nonempty] / weights[nonempty, None]
    return new, labels, float((w * sq).sum())


def kmeans_plusplus(X, n_clusters, sample_weight=None, random_state=None, n_local_trials=None):
    """Greedy k-means++ seeding (Arthur & Vassilvitskii), drawing random numbers in the same
    order as scikit-learn's ``kmeans_plusplus`` so the same seed picks the same points.

    Returns (centres (K, D), indices of the chosen points (K,)).
    """
    X = np.asarray(X, dtype=np.float64)
    rng = random_state if isinstance(random_state, np.random.RandomState) else np.random.RandomState(random_state)
    n = X.shape[0]
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if n_local_trials is None:
        n_local_trials = 2 + int(np.log(n_clusters))

    def sq_dists(rows):  # (len(rows), n) squared distances from X[rows] to every point
        diff = X[None, :, :] - X[rows][:, None, :]
        return (diff * diff).sum(axis=2)

    indices = np.empty(n_clusters, dtype=np.int64)
    indices[0] = rng.choice(n, p=w / w.sum())
    closest = sq_dists([indices[0]])[0]
    potential = closest @ w
    for c in range(1, n_clusters):
        # Draw candidates with probability proportional to w * D(x)^2.
        draws = rng.uniform(size=n_local_trials) * potential
        candidates = np.searchsorted(np.cumsum(w * closest, dtype=np.float64), draws)
        candidates = np.clip(candidates, None, n - 1)
        # Keep the candidate that most reduces the potential.
        cand_closest = np.minimum(closest, sq_dists(candidates))
        cand_potential = cand_closest @ w
        best = int(np.argmin(cand_potential))
        indices[c] = candidates[best]
        closest = cand_closest[best]
        potential = cand_potential[best]
    return X[indices].copy(), indices
