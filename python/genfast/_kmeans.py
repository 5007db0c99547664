"""genfast.KMeans: scikit-learn compatible k-means (Lloyd) on genfast's CPU or CUDA kernels.

The estimator owns validation, initialisation, the iteration loop and convergence, as in
scikit-learn; the inner loops (assignment, centre sums) are genfast.ops kernels. The loop
follows scikit-learn's ``_kmeans_single_lloyd`` step for step (same convergence tests, same
re-run of the E-step, same best-of-n_init rule), so from the same initial centres the two
give the same labels and inertia up to floating-point rounding.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics.pairwise import euclidean_distances
from sklearn.utils import check_random_state
from sklearn.utils.validation import _check_sample_weight, check_is_fitted

from . import _backend as be
from . import ops
from ._estimator import resolve_device, same_kind, validate_X

__all__ = ["KMeans"]


class _HostArrays:
    """Array operations of the Lloyd loop on numpy (data on the CPU)."""

    def asarray(self, a):
        return a

    def to_host(self, a):
        return a

    def take_host(self, a, rows):
        """a[rows] as a host numpy array."""
        return np.asarray(a[rows])

    def array_equal(self, a, b):
        return np.array_equal(a, b)

    def weighted_sum(self, values, weights):
        values = values.astype(np.float64, copy=False)
        return float(values.sum() if weights is None else values @ weights.astype(np.float64, copy=False))

    def farthest(self, sq_dist, n):
        """Indices of the n largest values, largest first, lower index first on ties."""
        order = np.argsort(-sq_dist.astype(np.float64, copy=False), kind="stable")
        return order[:n]

    def sq_dists_to_rows(self, X, x_sq_norms, rows):
        """(len(rows), N) squared distances from X[rows] to every point."""
        cand = X[rows]
        d = x_sq_norms[None, :] - 2 * (cand @ X.T) + x_sq_norms[rows][:, None]
        return np.maximum(d, 0, out=d)

    def cumsum64(self, a):
        return np.cumsum(a, dtype=np.float64)

    def searchsorted(self, sorted_values, v):
        return np.searchsorted(sorted_values, v)

    def minimum(self, a, b):
        return np.minimum(a, b)

    def row_sq_norms(self, X):
        return np.einsum("ij,ij->i", X, X)

    def mean0(self, X):
        return X.mean(axis=0)

    def var_mean(self, X):
        return float(np.mean(np.var(X, axis=0)))


class _TorchCudaArrays(_HostArrays):
    """The same operations on torch CUDA tensors (data stays on the GPU)."""

    def __init__(self, device):
        import torch

        self.torch = torch
        self.device = device

    def asarray(self, a):
        return self.torch.as_tensor(a, device=self.device)

    def to_host(self, a):
        return a.cpu().numpy() if be.is_torch(a) else np.asarray(a)

    def take_host(self, a, rows):
        return a[self.torch.as_tensor(rows, device=a.device)].cpu().numpy()

    def array_equal(self, a, b):
        return bool(self.torch.equal(a, b))

    def weighted_sum(self, values, weights):
        values = values.double()
        return float(values.sum() if weights is None else values @ weights.double())

    def farthest(self, sq_dist, n):
        order = self.torch.sort(sq_dist.double(), descending=True, stable=True).indices
        return order[:n].cpu().numpy()

    def sq_dists_to_rows(self, X, x_sq_norms, rows):
        rows = self.torch.as_tensor(rows, device=X.device)
        cand = X[rows]
        d = x_sq_norms[None, :] - 2 * (cand @ X.T) + x_sq_norms[rows][:, None]
        return d.clamp_(min=0)

    def cumsum64(self, a):
        return self.torch.cumsum(a.double(), 0)

    def searchsorted(self, sorted_values, v):
        return self.torch.searchsorted(sorted_values, self.torch.as_tensor(v, device=sorted_values.device)).cpu().numpy()

    def minimum(self, a, b):
        return self.torch.minimum(a, b)

    def row_sq_norms(self, X):
        return (X * X).sum(dim=1)

    def mean0(self, X):
        return X.mean(dim=0)

    def var_mean(self, X):
        return float(X.double().var(dim=0, unbiased=False).mean())


def _is_same_clustering(labels1, labels2) -> bool:
    """True if labels2 is a function of labels1 (each cluster of labels1 maps to one cluster
    of labels2), the test scikit-learn uses to skip an equivalent n_init run."""
    labels1 = np.asarray(labels1, dtype=np.int64)
    pairs = labels1 * (int(labels2.max()) + 1) + labels2
    return len(np.unique(pairs)) == len(np.unique(labels1))


def _moved_centers(centers, sums, weights):
    """(the next centres, squared shift summed over centres): each cluster's weighted mean in
    the centres' dtype; a cluster left with no weight keeps its centre."""
    nonempty = weights > 0
    new_centers = centers.copy()
    new_centers[nonempty] = (sums[nonempty] / weights[nonempty, None]).astype(centers.dtype)
    shift = new_centers.astype(np.float64) - centers
    return new_centers, float((shift * shift).sum())


class KMeans(ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin, BaseEstimator):
    """K-means clustering (Lloyd's algorithm) on genfast's fused CPU/CUDA kernels.

    Drop-in for ``sklearn.cluster.KMeans(algorithm="lloyd")``.

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters (centres).
    init : {'k-means++', 'random'} or array of shape (n_clusters, n_features), default='k-means++'
        'k-means++': greedy k-means++ as in scikit-learn (2 + log(k) local trials per centre).
        'random': n_clusters distinct points drawn with probability proportional to sample_weight.
        An array: the initial centres.
    n_init : 'auto' or int, default='auto'
        Runs with different seeds; the one with the lowest inertia is kept. 'auto' is 1 for
        'k-means++' and array init, 10 for 'random'.
    max_iter : int, default=300
        Maximum Lloyd iterations per run.
    tol : float, default=1e-4
        Convergence when the squared centre shift (summed over centres) is at most
        tol * mean feature variance of X, or when no label changes.
    verbose : int, default=0
    random_state : int, RandomState instance or None, default=None
    copy_x : bool, default=True
        X is centred (its mean subtracted) for accuracy. True works on a copy; False centres
        X in place and restores it before returning (it may differ by rounding).
    device : {'auto', 'cpu', 'cuda'}, default='auto'
        'auto' runs on the GPU when X is a CUDA tensor, else on the CPU.

    Attributes
    ----------
    cluster_centers_ : ndarray (n_clusters, n_features), X's float dtype
    labels_ : ndarray (n_samples,) int64
    inertia_ : float, sum of weighted squared distances to the closest centre
    n_iter_ : int, iterations of the best run
    n_features_in_ : int
    feature_names_in_ : ndarray, when X has string column names
    """

    def __init__(self, n_clusters=8, *, init="k-means++", n_init="auto", max_iter=300, tol=1e-4,
                 verbose=0, random_state=None, copy_x=True, device="auto"):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.verbose = verbose
        self.random_state = random_state
        self.copy_x = copy_x
        self.device = device

    # ------------------------------------------------------------------ validation
    def _check_params(self, n_samples):
        def positive_int(name, value):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{name} must be an int, got {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")

        positive_int("n_clusters", self.n_clusters)
        positive_int("max_iter", self.max_iter)
        if isinstance(self.tol, bool) or not isinstance(self.tol, numbers.Real) or not self.tol >= 0:
            raise ValueError(f"tol must be a non-negative float, got {self.tol!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        init_is_array = not isinstance(self.init, str)
        if not init_is_array and self.init not in ("k-means++", "random"):
            raise ValueError(f"init must be 'k-means++', 'random' or an array of shape (n_clusters, n_features), got {self.init!r}")
        if isinstance(self.n_init, str) and self.n_init == "auto":
            n_init = 1 if init_is_array or self.init == "k-means++" else 10
        else:
            positive_int("n_init", self.n_init)
            n_init = self.n_init
        if init_is_array and n_init != 1:
            warnings.warn(
                f"Explicit initial center position passed: performing only one init in {type(self).__name__} "
                f"instead of n_init={self.n_init}.", RuntimeWarning, stacklevel=3)
            n_init = 1
        if n_samples < self.n_clusters:
            raise ValueError(f"n_samples={n_samples} should be >= n_clusters={self.n_clusters}.")
        return n_init

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y=None, sample_weight=None):
        """Compute k-means clustering of X (n_samples, n_features), optionally weighted."""
        device = resolve_device(self.device, X)
        X_in = X
        X = validate_X(self, X, reset=True, copy=self.copy_x)
        # the kernels run with check_finite=False on the centred data (up to twice |X|)
        ops._distance_range("X", X, X.shape[1], headroom=2.0)
        n_init = self._check_params(X.shape[0])
        random_state = check_random_state(self.random_state)
        dtype = be.dtype_name(X)

        if device == "cuda":
            import torch

            arrays = _TorchCudaArrays(X.device if be.is_torch(X) else torch.device("cuda"))
            Xw = arrays.asarray(X)  # numpy input: copied to the GPU; CUDA tensor: as is
            if self.copy_x and be.is_torch(X_in) and Xw.data_ptr() == X_in.data_ptr():
                Xw = Xw.clone()
        else:
            arrays = _HostArrays()
            Xw = X  # validate_data copied it when copy_x

        sw = None
        if sample_weight is not None:
            sw_host = _check_sample_weight(be.to_numpy(sample_weight), np.empty((X.shape[0], 0)), dtype=dtype)
            if np.any(sw_host < 0):
                raise ValueError("sample_weight must be non-negative")
            if not sw_host.sum() > 0:
                raise ValueError("sample_weight must have a positive sum")
            sw = arrays.asarray(sw_host)

        init = self.init
        init_is_array = not isinstance(init, str)
        if init_is_array:
            init = np.array(be.to_numpy(init), dtype=dtype, copy=True, order="C")
            if init.shape != (self.n_clusters, X.shape[1]):
                raise ValueError(
                    f"init should be of shape ({self.n_clusters}, {X.shape[1]}) "
                    f"(n_clusters, n_features), got {init.shape}")
            if not np.isfinite(init).all():
                raise ValueError("init contains NaN or infinity")

        # Centre the data: distances of centred points lose less to float rounding.
        X_mean = arrays.mean0(Xw)
        Xw -= X_mean
        best = None
        try:
            X_mean_host = arrays.to_host(X_mean)
            if init_is_array:
                init -= X_mean_host
            tol = self.tol * arrays.var_mean(Xw) if self.tol > 0 else 0.0
            use_plusplus = not init_is_array and self.init == "k-means++"
            x_sq_norms = arrays.row_sq_norms(Xw) if use_plusplus else None
            for _ in range(n_init):
                if init_is_array:
                    centers = init.copy()
                elif use_plusplus:
                    centers = self._kmeans_plusplus(arrays, Xw, x_sq_norms, sw, random_state)
                else:
                    centers = self._random_init(arrays, Xw, sw, random_state)
                if self.verbose:
                    print("Initialization complete")
                labels, inertia, centers, n_iter = self._lloyd(arrays, Xw, sw, centers, tol)
                if best is None or (inertia < best[1] and not _is_same_clustering(
                        arrays.to_host(labels), arrays.to_host(best[0]))):
                    best = (labels, inertia, centers, n_iter)
        finally:
            if not self.copy_x:
                Xw += X_mean  # restore the caller's data (in place, as copy_x=False says)

        labels, inertia, centers, n_iter = best
        labels = arrays.to_host(labels)
        distinct = len(np.unique(labels))
        if distinct < self.n_clusters:
            warnings.warn(
                f"Number of distinct clusters ({distinct}) found smaller than n_clusters "
                f"({self.n_clusters}). Possibly due to duplicate points in X.",
                ConvergenceWarning, stacklevel=2)
        self.cluster_centers_ = (centers + X_mean_host).astype(dtype, copy=False)
        self._n_features_out = self.cluster_centers_.shape[0]
        self.labels_ = labels
        self.inertia_ = inertia
        self.n_iter_ = n_iter
        return self

    def _random_init(self, arrays, Xw, sw, random_state):
        n = Xw.shape[0]
        # Always pass p (uniform when unweighted): numpy draws differently without it, and
        # scikit-learn passes it, so the same seed picks the same points.
        w = np.ones(n) if sw is None else arrays.to_host(sw).astype(np.float64)
        seeds = random_state.choice(n, size=self.n_clusters, replace=False, p=w / w.sum())
        return arrays.take_host(Xw, seeds)

    def _kmeans_plusplus(self, arrays, Xw, x_sq_norms, sw, random_state):
        """Greedy k-means++ drawing random numbers exactly as scikit-learn does."""
        n = Xw.shape[0]
        K = self.n_clusters
        n_local_trials = 2 + int(np.log(K))
        w_host = np.ones(n) if sw is None else arrays.to_host(sw).astype(np.float64)
        indices = np.empty(K, dtype=np.int64)
        indices[0] = random_state.choice(n, p=w_host / w_host.sum())
        closest = arrays.sq_dists_to_rows(Xw, x_sq_norms, indices[:1])[0]
        potential = arrays.weighted_sum(closest, sw)
        for c in range(1, K):
            draws = random_state.uniform(size=n_local_trials) * potential
            weighted = closest if sw is None else sw * closest
            candidates = np.clip(arrays.searchsorted(arrays.cumsum64(weighted), draws), None, n - 1)
            dist = arrays.minimum(closest[None, :], arrays.sq_dists_to_rows(Xw, x_sq_norms, candidates))
            potentials = [arrays.weighted_sum(dist[t], sw) for t in range(n_local_trials)]
            best = int(np.argmin(potentials))
            indices[c] = candidates[best]
            closest = dist[best]
            potential = potentials[best]
        return arrays.take_host(Xw, indices)

    def _lloyd(self, arrays, Xw, sw, centers, tol):
        """One k-means run from `centers` (host array); returns (labels, inertia, centres, n_iter)."""
        labels_old = None
        strict_convergence = False
        for i in range(self.max_iter):
            labels, sq_dist, sums, weights = ops.kmeans_lloyd_step(
                Xw, arrays.asarray(centers), sw, return_means=False, check_finite=False)
            sums = arrays.to_host(sums).astype(np.float64)
            weights = arrays.to_host(weights).astype(np.float64)
            self._relocate_empty_clusters(arrays, Xw, sw, labels, sq_dist, sums, weights)
            if self.verbose:
                print(f"Iteration {i}, inertia {arrays.weighted_sum(sq_dist, sw)}.")
            centers, shift_tot = _moved_centers(centers, sums, weights)
            if labels_old is not None and arrays.array_equal(labels, labels_old):
                if self.verbose:
                    print(f"Converged at iteration {i}: strict convergence.")
                strict_convergence = True
                break
            if shift_tot <= tol:
                if self.verbose:
                    print(f"Converged at iteration {i}: center shift {shift_tot} within tolerance {tol}.")
                break
            labels_old = labels
        if not strict_convergence:
            # The centres moved after the last assignment: re-run the E-step so that labels
            # and inertia describe the returned centres.
            labels, sq_dist = ops.kmeans_assign(Xw, arrays.asarray(centers), check_finite=False)
        return labels, arrays.weighted_sum(sq_dist, sw), centers, i + 1

    @staticmethod
    def _relocate_empty_clusters(arrays, Xw, sw, labels, sq_dist, sums, weights):
        """Move each empty cluster onto one of the points farthest from their centres
        (largest distance first, lowest index on ties): deterministic, never NaN."""
        empty = np.flatnonzero(weights == 0)
        if len(empty) == 0:
            return
        far = arrays.farthest(sq_dist, len(empty))
        if float(arrays.take_host(sq_dist, far[:1])[0]) == 0:
            return  # more clusters than distinct points: nothing to move
        rows = arrays.take_host(Xw, far).astype(np.float64)
        old = arrays.take_host(labels, far)
        w = np.ones(len(far)) if sw is None else arrays.take_host(sw, far).astype(np.float64)
        for new_k, old_k, x, wi in zip(empty, old, rows, w):
            sums[old_k] -= wi * x
            weights[old_k] -= wi
            sums[new_k] = wi * x
            weights[new_k] = wi

    # ------------------------------------------------------------------ prediction
    def _check_predict_input(self, X):
        check_is_fitted(self)
        X = validate_X(self, X, reset=False)
        ops._distance_range("X", X, X.shape[1])  # transform's distances too
        return X

    def _centers_like(self, X):
        if be.is_torch(X):
            import torch

            return torch.as_tensor(self.cluster_centers_, dtype=X.dtype, device=X.device)
        return self.cluster_centers_.astype(X.dtype, copy=False)

    def predict(self, X):
        """Index of the closest centre for each sample of X (same kind as X: numpy or torch)."""
        X_in, X = X, self._check_predict_input(X)
        labels, _ = ops.kmeans_assign(X, self._centers_like(X))
        return same_kind(labels, X_in)

    def fit_predict(self, X, y=None, sample_weight=None):
        """Fit, and return the training labels (labels_)."""
        return self.fit(X, sample_weight=sample_weight).labels_

    def transform(self, X):
        """Euclidean distances (n_samples, n_clusters) from X to every centre."""
        X_in, X = X, self._check_predict_input(X)
        C = self._centers_like(X)
        if be.is_torch(X):
            import torch

            return torch.cdist(X, C)
        return same_kind(euclidean_distances(X, C), X_in)

    def fit_transform(self, X, y=None, sample_weight=None):
        """Fit, then return the distances of X to the fitted centres."""
        return self.fit(X, sample_weight=sample_weight).transform(X)

    def score(self, X, y=None, sample_weight=None):
        """Opposite of the (weighted) inertia of X on the fitted centres."""
        X = self._check_predict_input(X)
        _, sq_dist = ops.kmeans_assign(X, self._centers_like(X))
        sq = be.to_numpy(sq_dist).astype(np.float64)
        if sample_weight is None:
            return -float(sq.sum())
        sw = _check_sample_weight(be.to_numpy(sample_weight), np.empty((sq.shape[0], 0)), dtype=np.float64)
        return -float(sq @ sw)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
