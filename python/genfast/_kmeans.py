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
from ._estimator import resolve_device, restores_state_on_error, same_kind, validate_X

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

    def sq_dists(self, X, x_sq_norms, cand, cand_sq_norms):
        """(len(cand), N) squared distances from the rows of cand to every point of X."""
        d = x_sq_norms[None, :] - 2 * (cand @ X.T) + cand_sq_norms[:, None]
        return np.maximum(d, 0, out=d)

    def cumsum64_from(self, start, a):
        """start + a[0], start + a[0] + a[1], ... in float64, added one term at a time (so a
        cumulative sum split in pieces, each started from the last sum of the one before, is
        bitwise the sum of the whole)."""
        return np.cumsum(np.concatenate(([start], a.astype(np.float64, copy=False))))[1:]

    def searchsorted(self, sorted_values, v):
        return np.searchsorted(sorted_values, v)

    def minimum(self, a, b):
        return np.minimum(a, b)

    def row_sq_norms(self, X):
        return np.einsum("ij,ij->i", X, X)

    def mean0(self, X):
        return X.mean(axis=0)

    def column_moments64(self, X):
        """(sum_i x_i, sum_i x_i^2) per column in float64 (no float64 copy of X)."""
        return X.sum(axis=0, dtype=np.float64), np.einsum("ij,ij->j", X, X, dtype=np.float64)

    def empty(self, n, dtype):
        return np.empty(n, dtype=dtype)

    def count_changed(self, a, b):
        return int(np.count_nonzero(a != b))

    def lloyd_piece(self, piece, shift, centers, sw_piece, totals):
        """Labels and squared distances of a piece of points piece - shift (the kernel centres
        them a cache-sized chunk at a time); the piece's per-cluster sums of w x, then of w,
        added into totals (float64, (K*D + K,)) in the kernel's order."""
        n = piece.shape[0]
        labels = np.empty((1, n), dtype=np.int64)
        sq_dist = np.empty((1, n), dtype=piece.dtype)
        # The kernel takes the weights in X's dtype (ops converts them the same way).
        weights = None if sw_piece is None else np.ascontiguousarray(sw_piece[None], dtype=piece.dtype)
        be._core.kmeans_lloyd_step_accumulate(np.ascontiguousarray(piece)[None], shift, centers[None],
                                              weights, labels, sq_dist, totals[None])
        return labels[0], sq_dist[0]


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

    def sq_dists(self, X, x_sq_norms, cand, cand_sq_norms):
        d = x_sq_norms[None, :] - 2 * (cand @ X.T) + cand_sq_norms[:, None]
        return d.clamp_(min=0)

    def cumsum64_from(self, start, a):
        return start + self.torch.cumsum(a.double(), 0)  # one piece on the GPU: start is 0

    def searchsorted(self, sorted_values, v):
        return self.torch.searchsorted(sorted_values, self.torch.as_tensor(v, device=sorted_values.device)).cpu().numpy()

    def minimum(self, a, b):
        return self.torch.minimum(a, b)

    def row_sq_norms(self, X):
        return (X * X).sum(dim=1)

    def mean0(self, X):
        return X.mean(dim=0)

    def column_moments64(self, X):
        X = X.double()
        return self.to_host(X.sum(dim=0)), self.to_host((X * X).sum(dim=0))

    def empty(self, n, dtype):
        return self.torch.empty(n, dtype=getattr(self.torch, np.dtype(dtype).name), device=self.device)

    def count_changed(self, a, b):
        return int((a != b).sum())

    def lloyd_piece(self, piece, shift, centers, sw_piece, totals):
        assert shift is None  # the GPU fit holds a centred copy
        labels, sq_dist, sums, weights = ops.kmeans_lloyd_step(
            piece, self.asarray(centers), sw_piece, return_means=False, check_finite=False)
        totals += np.concatenate([self.to_host(sums).ravel(), self.to_host(weights)]).astype(np.float64)
        return labels, sq_dist


#: Bytes of X centred at a time by the CPU fit (see _CentredPieces).
_PIECE_BYTES = 16 << 20


class _CentredPieces:
    """X - mean on the CPU, a piece of rows at a time, never all at once: the fit centres X for
    accuracy without a copy of X (at N=20M D=16 float32 that copy alone was 1.28 GB), and each
    kernel call works on a bounded piece. Pieces start at multiples of the kernels' summation
    block (_core.SUM_BLOCK_POINTS), so sums carried from piece to piece are bitwise those of
    one call over all the rows."""

    def __init__(self, X, mean, piece_bytes=None):
        self.X, self.mean = X, mean
        self.n = X.shape[0]
        block = be._core.SUM_BLOCK_POINTS
        row_bytes = X.shape[1] * X.itemsize
        rows = max(block, (piece_bytes or _PIECE_BYTES) // row_bytes // block * block)
        self.bounds = [(i, min(self.n, i + rows)) for i in range(0, self.n, rows)]
        self._buffer = np.empty((min(rows, self.n), X.shape[1]), dtype=X.dtype)

    def pieces(self):
        """(i0, i1, X[i0:i1] - mean) for consecutive pieces; the array is reused by the next piece."""
        for i0, i1 in self.bounds:
            piece = self._buffer[: i1 - i0]
            np.subtract(self.X[i0:i1], self.mean, out=piece)
            yield i0, i1, piece

    def lloyd_pieces(self):
        """(i0, i1, X[i0:i1], mean) for the same pieces: the Lloyd kernel centres the rows
        itself, a cache-sized chunk at a time, bitwise as pieces() would (no pass through
        the buffer)."""
        for i0, i1 in self.bounds:
            yield i0, i1, self.X[i0:i1], self.mean

    def rows(self, index):
        """The centred rows X[index] - mean (a host array)."""
        return np.asarray(self.X[index] - self.mean)


class _CentredWhole:
    """A centred copy of X on the GPU, as one piece (GPU memory is not the host's to bound)."""

    def __init__(self, arrays, Xw):
        self.arrays, self.Xw = arrays, Xw
        self.n = Xw.shape[0]
        self.bounds = [(0, self.n)]

    def pieces(self):
        yield 0, self.n, self.Xw

    def lloyd_pieces(self):
        yield 0, self.n, self.Xw, None

    def rows(self, index):
        return self.arrays.take_host(self.Xw, index)


def _piece(a, i0, i1):
    return None if a is None else a[i0:i1]


def _weighted_total(arrays, data, values, sw):
    """sum_i w_i values_i in float64, summed piece by piece."""
    return sum(arrays.weighted_sum(values[i0:i1], _piece(sw, i0, i1)) for i0, i1 in data.bounds)


def _mean_variance(arrays, data):
    """Mean over features of the (biased) variance of the centred data, from float64 sums of
    x and x^2 piece by piece (scikit-learn's tolerance scale)."""
    s1 = s2 = 0.0
    for _, _, piece in data.pieces():
        piece_s1, piece_s2 = arrays.column_moments64(piece)
        s1, s2 = s1 + piece_s1, s2 + piece_s2
    mean = s1 / data.n
    return float(np.mean(s2 / data.n - mean * mean))


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
        Kept for scikit-learn compatibility; X is never modified either way. The fit centres X
        (subtracts its mean) for accuracy: on the CPU a piece of rows at a time in a small
        buffer, on the GPU in a copy.
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
                f"instead of n_init={self.n_init}.", RuntimeWarning, stacklevel=4)
            n_init = 1
        if n_samples < self.n_clusters:
            raise ValueError(f"n_samples={n_samples} should be >= n_clusters={self.n_clusters}.")
        return n_init

    # ------------------------------------------------------------------ fitting
    @restores_state_on_error
    def fit(self, X, y=None, sample_weight=None):
        """Compute k-means clustering of X (n_samples, n_features), optionally weighted."""
        device = resolve_device(self.device, X)
        X = validate_X(self, X, reset=True)  # never modified: no copy needed
        # the kernels run with check_finite=False on the centred data (up to twice |X|)
        ops._distance_range("X", X, X.shape[1], headroom=2.0)
        n_init = self._check_params(X.shape[0])
        random_state = check_random_state(self.random_state)
        dtype = be.dtype_name(X)

        # Centre the data: distances of centred points lose less to float rounding.
        if device == "cuda":
            import torch

            arrays = _TorchCudaArrays(X.device if be.is_torch(X) else torch.device("cuda"))
            Xd = arrays.asarray(X)  # numpy input: copied to the GPU; CUDA tensor: as is
            X_mean = arrays.mean0(Xd)
            data = _CentredWhole(arrays, Xd - X_mean)
        else:
            arrays = _HostArrays()
            X_mean = arrays.mean0(X)
            data = _CentredPieces(X, X_mean)

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

        X_mean_host = arrays.to_host(X_mean)
        if init_is_array:
            init -= X_mean_host
        tol = self.tol * _mean_variance(arrays, data) if self.tol > 0 else 0.0
        best = None
        for _ in range(n_init):
            if init_is_array:
                centers = init.copy()
            elif self.init == "k-means++":
                centers = self._kmeans_plusplus(arrays, data, sw, random_state)
            else:
                centers = self._random_init(arrays, data, sw, random_state)
            if self.verbose:
                print("Initialization complete")
            labels, inertia, centers, n_iter = self._lloyd(arrays, data, sw, centers, tol)
            if best is None or (inertia < best[1] and not _is_same_clustering(
                    arrays.to_host(labels), arrays.to_host(best[0]))):
                best = (labels, inertia, centers, n_iter)

        labels, inertia, centers, n_iter = best
        labels = arrays.to_host(labels)
        distinct = int(np.count_nonzero(np.bincount(labels, minlength=self.n_clusters)))
        if distinct < self.n_clusters:
            warnings.warn(
                f"Number of distinct clusters ({distinct}) found smaller than n_clusters "
                f"({self.n_clusters}). Possibly due to duplicate points in X.",
                ConvergenceWarning, stacklevel=3)
        centers = (centers + X_mean_host).astype(dtype, copy=False)
        vars(self).update(cluster_centers_=centers, _n_features_out=centers.shape[0], labels_=labels,
                          inertia_=inertia, n_iter_=n_iter)
        return self

    def _random_init(self, arrays, data, sw, random_state):
        n = data.n
        # Always pass p (uniform when unweighted): numpy draws differently without it, and
        # scikit-learn passes it, so the same seed picks the same points.
        w = np.ones(n) if sw is None else arrays.to_host(sw).astype(np.float64)
        seeds = random_state.choice(n, size=self.n_clusters, replace=False, p=w / w.sum())
        return data.rows(seeds)

    @staticmethod
    def _draw_first_index(arrays, data, sw, random_state):
        """random_state.choice(n, p=w / w.sum()) (scikit-learn's first k-means++ centre, the
        same draw from the same state) without n-sized float64 arrays: numpy draws u uniform
        and takes the first index whose normalised cumulative probability exceeds u; here the
        cumulative sums run piece by piece, carried over (so they are numpy's, bitwise)."""
        n = data.n
        sw_host = None if sw is None else arrays.to_host(sw)
        total = float(n) if sw_host is None else float(sw_host.sum(dtype=np.float64))

        def probabilities(i0, i1):
            return np.full(i1 - i0, 1.0 / n) if sw_host is None else sw_host[i0:i1].astype(np.float64) / total

        last = 0.0
        for i0, i1 in data.bounds:
            last = _HostArrays().cumsum64_from(last, probabilities(i0, i1))[-1]
        u = random_state.random_sample()
        cdf_end = 0.0
        for i0, i1 in data.bounds:
            cdf = _HostArrays().cumsum64_from(cdf_end, probabilities(i0, i1))
            cdf_end = cdf[-1]
            cdf /= last
            if cdf[-1] > u:
                return i0 + int(np.searchsorted(cdf, u, side="right"))
        return n - 1  # unreachable: the last normalised value is 1 > u

    @staticmethod
    def _search_weighted_cumsum(arrays, data, values, sw, draws):
        """np.searchsorted(np.cumsum(w * values, dtype=float64), draws) with the cumulative
        sum formed piece by piece (carried over, so bitwise the same): for each draw the first
        index whose running sum reaches it, n past the end."""
        found = np.full(len(draws), data.n, dtype=np.int64)
        running = 0.0
        for i0, i1 in data.bounds:
            weighted = values[i0:i1] if sw is None else sw[i0:i1] * values[i0:i1]
            csum = arrays.cumsum64_from(running, weighted)
            end = float(csum[-1])
            here = (found == data.n) & (np.asarray(draws) <= end)
            if here.any():
                found[here] = i0 + arrays.searchsorted(csum, np.asarray(draws)[here])
            running = end
        return found

    def _kmeans_plusplus(self, arrays, data, sw, random_state):
        """Greedy k-means++ drawing random numbers exactly as scikit-learn does, piece by piece
        over the data: besides a few pieces it holds one (N,) array, the distance of every
        point to its closest centre so far."""
        n = data.n
        K = self.n_clusters
        n_local_trials = 2 + int(np.log(K))
        indices = np.empty(K, dtype=np.int64)
        indices[0] = self._draw_first_index(arrays, data, sw, random_state)

        def candidate_distances(piece, i0, i1, cand, cand_sq_norms, closest):
            """(trials, i1 - i0): each point's squared distance to its closest centre if the
            candidate of that row joined the centres."""
            d = arrays.sq_dists(piece, arrays.row_sq_norms(piece), cand, cand_sq_norms)
            return d if closest is None else arrays.minimum(closest[i0:i1][None, :], d)

        first = arrays.asarray(data.rows(indices[:1]))
        closest = arrays.empty(n, be.dtype_name(first))
        for i0, i1, piece in data.pieces():
            closest[i0:i1] = candidate_distances(piece, i0, i1, first, arrays.row_sq_norms(first), None)[0]
        potential = _weighted_total(arrays, data, closest, sw)
        for c in range(1, K):
            draws = random_state.uniform(size=n_local_trials) * potential
            candidates = np.clip(self._search_weighted_cumsum(arrays, data, closest, sw, draws), None, n - 1)
            cand = arrays.asarray(data.rows(candidates))
            cand_sq_norms = arrays.row_sq_norms(cand)
            potentials = np.zeros(n_local_trials)
            for i0, i1, piece in data.pieces():
                d = candidate_distances(piece, i0, i1, cand, cand_sq_norms, closest)
                potentials += [arrays.weighted_sum(d[t], _piece(sw, i0, i1)) for t in range(n_local_trials)]
            best = int(np.argmin(potentials))
            indices[c] = candidates[best]
            # The best candidate's distances again (the same computation): keeping every
            # candidate's would take n_local_trials (N,) arrays.
            for i0, i1, piece in data.pieces():
                closest[i0:i1] = candidate_distances(piece, i0, i1, cand, cand_sq_norms, closest)[best]
            potential = potentials[best]
        return data.rows(indices)

    def _lloyd(self, arrays, data, sw, centers, tol):
        """One k-means run from `centers` (host array); returns (labels, inertia, centres, n_iter).
        The data is visited piece by piece; besides the pieces it holds the (N,) labels and
        squared distances."""
        K, D = centers.shape
        dtype = centers.dtype
        labels = arrays.empty(data.n, np.int64)
        sq_dist = arrays.empty(data.n, dtype)
        strict_convergence = False
        for i in range(self.max_iter):
            totals = np.zeros(K * D + K)  # per-cluster sums of w x, then of w
            changed = 0
            for i0, i1, piece, shift in data.lloyd_pieces():
                piece_labels, piece_sq_dist = arrays.lloyd_piece(piece, shift, centers, _piece(sw, i0, i1), totals)
                if i > 0:
                    changed += arrays.count_changed(labels[i0:i1], piece_labels)
                labels[i0:i1] = piece_labels
                sq_dist[i0:i1] = piece_sq_dist
            # Rounded to X's dtype, as the one-call kernel returns them.
            sums = totals[: K * D].reshape(K, D).astype(dtype).astype(np.float64)
            weights = totals[K * D:].astype(dtype).astype(np.float64)
            if not weights.all():
                self._relocate_onto_farthest(arrays, data, sw, labels, sq_dist, sums, weights)
            if self.verbose:
                print(f"Iteration {i}, inertia {_weighted_total(arrays, data, sq_dist, sw)}.")
            centers, shift_tot = _moved_centers(centers, sums, weights)
            if i > 0 and changed == 0:
                if self.verbose:
                    print(f"Converged at iteration {i}: strict convergence.")
                strict_convergence = True
                break
            if shift_tot <= tol:
                if self.verbose:
                    print(f"Converged at iteration {i}: center shift {shift_tot} within tolerance {tol}.")
                break
        if not strict_convergence:
            # The centres moved after the last assignment: re-run the E-step so that labels
            # and inertia describe the returned centres.
            C = arrays.asarray(centers)
            for i0, i1, piece in data.pieces():
                labels[i0:i1], sq_dist[i0:i1] = ops.kmeans_assign(piece, C, check_finite=False)
        return labels, _weighted_total(arrays, data, sq_dist, sw), centers, i + 1

    @classmethod
    def _relocate_onto_farthest(cls, arrays, data, sw, labels, sq_dist, sums, weights):
        """_relocate_empty_clusters on the union of each piece's farthest points (in index
        order, so it holds the farthest points of all X with the same ties)."""
        n_empty = int(np.count_nonzero(weights == 0))
        rows = np.concatenate([i0 + np.sort(arrays.farthest(sq_dist[i0:i1], n_empty)) for i0, i1 in data.bounds])
        w = None if sw is None else arrays.take_host(sw, rows)
        cls._relocate_empty_clusters(_HostArrays(), data.rows(rows), w, arrays.take_host(labels, rows),
                                     arrays.take_host(sq_dist, rows), sums, weights)

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
