"""genfast.dask: KMeans and GaussianMixture fit on dask arrays chunked by rows.

Every pass over the data maps one of genfast's kernels (numpy in, numpy out, GIL released)
over the row chunks of X, turns each chunk into additive statistics in float64 and sums them
with a tree of combine tasks, ``_SPLIT_EVERY`` partial results a task (the shape of dask's own
reductions), so only K x D-sized results travel and only the final one reaches the client.
The client then updates the parameters with the single-machine estimators' own code, so from
the same initial parameters the fitted parameters equal genfast.KMeans' and
genfast.GaussianMixture's to floating-point rounding.

- k-means: per-cluster weighted sums, weights and the inertia of each chunk
  (``ops.kmeans_lloyd_step``). Initialisation by k-means|| (Bahmani et al., "Scalable
  K-Means++", VLDB 2012): a few rounds that each keep every point with probability
  ell w d^2(x, C) / phi over the data, then weighted k-means++ and Lloyd on those candidates
  on the client.
- Gaussian mixtures: the log-likelihood, N_k, the weighted sums and the scatter of each chunk
  (``ops.gmm_em_step``). A chunk's scatter is centred on its own means, so chunks are pooled
  with the exact parallel formula of Chan et al. (each scatter moved to the pooled means in
  float64), never through E[x x^T] - mu mu^T.

The computations run on whatever dask scheduler is active: a ``dask.distributed`` Client's
cluster, or the local threads. A pass either returns the statistics of every chunk or raises
(a chunk lost with a worker is recomputed by the scheduler, or the compute fails), so a fit
never continues from partial statistics. Persist X (``X = X.persist()``) before fitting, or
every iteration recomputes it from its source.
"""

from __future__ import annotations

from functools import partial

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

try:
    import dask
    import dask.array as da
    from dask import delayed
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("genfast.dask needs dask: pip install 'genfast[dask]'") from exc

from . import ops
from ._estimator import restores_state_on_error
from ._kmeans import KMeans as _SingleKMeans
from ._kmeans import _HostArrays, _moved_centers
from ._mixture import GaussianMixture as _SingleGaussianMixture
from ._mixture import _one_hot, _Place, _check_int, _check_real
from ._pooling import pooled_statistics

__all__ = ["KMeans", "GaussianMixture"]

# Partial results combined by one task of the reduction tree (dask's reductions use 8 too).
_SPLIT_EVERY = 8


# ============================================================================ map-reduce over row chunks
def _row_chunked(est, X, *, reset, ensure_min_samples=1):
    """X as a 2-d float32/float64 dask array chunked by rows only (numpy input becomes one
    chunk; integers become float64, float16 float32); sets or checks n_features_in_."""
    X = da.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-d (n_samples, n_features), got shape {X.shape}")
    if any(np.isnan(n) for n in X.shape):
        raise ValueError(f"X has unknown chunk sizes (shape {X.shape}); call X.compute_chunk_sizes() first")
    if X.dtype not in (np.float32, np.float64):
        if X.dtype.kind not in "biuf":
            raise TypeError(f"X must hold real numbers, got dtype {X.dtype}")
        X = X.astype(np.float32 if X.dtype.kind == "f" else np.float64)
    n_samples, n_features = X.shape
    if n_samples < ensure_min_samples:
        raise ValueError(f"X: found array with {n_samples} sample(s) (shape={X.shape}) while a minimum of "
                         f"{ensure_min_samples} is required.")
    if n_features < 1:
        raise ValueError(f"X: found array with 0 feature(s) (shape={X.shape}) while a minimum of 1 is required.")
    if reset:
        est.n_features_in_ = n_features
    elif n_features != est.n_features_in_:
        raise ValueError(f"X has {n_features} features, but {type(est).__name__} is expecting "
                         f"{est.n_features_in_} features as input.")
    return X.rechunk({1: -1}) if X.numblocks[1] > 1 else X


def _blocks(a, n_blocks=None):
    """The row chunks of a dask array as a list of delayed blocks; None gives n_blocks Nones."""
    return [None] * n_blocks if a is None else a.to_delayed().ravel().tolist()


def _tree_reduce(parts, combine):
    """One delayed result from a list of delayed partial results: combine(group) over
    consecutive groups of _SPLIT_EVERY, level by level (order kept, depth log_8 of the count)."""
    while len(parts) > 1:
        parts = [delayed(combine, pure=True)(parts[i:i + _SPLIT_EVERY]) for i in range(0, len(parts), _SPLIT_EVERY)]
    return parts[0]


def _map_reduce(chunk_statistics, combine, block_lists, *shared):
    """chunk_statistics(blocks of chunk i..., *shared) for every row chunk i, reduced by a
    tree of combine() tasks and computed. The shared arguments enter the graph once."""
    shared = [delayed(value) for value in shared]
    parts = [delayed(chunk_statistics, pure=True)(*blocks, *shared) for blocks in zip(*block_lists)]
    return _tree_reduce(parts, combine).compute()


def _sum_parts(parts):
    """Element-wise sum of tuples of statistics (arrays and floats, float64)."""
    return tuple(sum(values) for values in zip(*parts))


def _concatenate_parts(parts):
    """Tuples of per-chunk arrays joined in chunk order."""
    return tuple(np.concatenate(values) for values in zip(*parts))


# ============================================================================ k-means chunk kernels
# The k-means passes work in coordinates shifted by `offset` (KMeans.fit: X's mean, or zeros).
def _shifted(X, offset):
    """X - offset; X itself (no copy) for a zero offset."""
    return X - offset if offset.any() else X


def _lloyd_chunk(X, sample_weight, offset, centers):
    """(per-cluster sums of w x (K, D), weights (K,), inertia) of one chunk against the
    centres, float64."""
    _, sq_dist, sums, weights = ops.kmeans_lloyd_step(_shifted(X, offset), centers, sample_weight,
                                                      return_means=False, check_finite=False)
    return sums.astype(np.float64), weights.astype(np.float64), _HostArrays().weighted_sum(sq_dist, sample_weight)


def _farthest_chunk(X, sample_weight, offset, centers, n_points):
    """The n_points of a chunk farthest from their nearest centre (largest first, lower index on
    ties, then put back in index order): (squared distances, shifted points, labels, weights)."""
    X = _shifted(X, offset)
    labels, sq_dist = ops.kmeans_assign(X, centers, check_finite=False)
    rows = np.sort(_HostArrays().farthest(sq_dist, n_points))
    weights = np.ones(len(rows), X.dtype) if sample_weight is None else sample_weight[rows]
    return sq_dist[rows], X[rows], labels[rows], weights


def _nearest_sq_dist(X, offset, centers, sq_dist_before):
    """d^2(x, C) for the candidates so far: the smaller of the distance to the earlier
    candidates (None in the first round) and to the new `centers`."""
    _, sq_dist = ops.kmeans_assign(_shifted(X, offset), centers, check_finite=False)
    return sq_dist if sq_dist_before is None else np.minimum(sq_dist_before, sq_dist)


def _potential_chunk(sq_dist, sample_weight):
    """(phi,) = (sum_x w d^2(x, C),) of one chunk, float64."""
    return (_HostArrays().weighted_sum(sq_dist, sample_weight),)


def _oversample_chunk(X, sample_weight, sq_dist, offset, scale, seed, chunk_index):
    """The shifted points of a chunk kept, each independently, with probability
    min(1, scale w d^2(x, C)); the draws depend only on (seed, chunk_index)."""
    keep_probability = scale * sq_dist.astype(np.float64)
    if sample_weight is not None:
        keep_probability *= sample_weight
    keep = np.random.default_rng((seed, chunk_index)).random(len(keep_probability)) < keep_probability
    return X[keep] - offset


def _shifted_rows(X, offset, rows):
    return X[rows] - offset


def _nearest_label(X, centers):
    return ops.kmeans_assign(X, centers)[0]


# ============================================================================ KMeans
class KMeans(ClusterMixin, BaseEstimator):
    """K-means (Lloyd) on a dask array chunked by rows, with genfast's kernels on every chunk.

    Each iteration is one pass: ``ops.kmeans_lloyd_step`` on every chunk gives per-cluster
    sums, weights and inertia, tree-reduced to the client, which moves the centres exactly as
    genfast.KMeans does (centring of X when its mean is farther from the origin than its
    spread, tolerance scaled by the mean feature variance,
    relocation of empty clusters to the farthest points, final inertia of the returned
    centres). From the same initial centres (``init=array``) the fitted centres, inertia and
    iteration count equal genfast.KMeans' to rounding. Labels are compared only through the
    centres: unchanged labels give a zero centre shift, which stops the loop at the same
    iteration as scikit-learn's strict convergence.

    Parameters
    ----------
    n_clusters : int, default=8
    init : 'k-means||' or array of shape (n_clusters, n_features), default='k-means||'
        'k-means||': Bahmani et al.'s parallel k-means++. The first candidate is one point
        drawn with probability proportional to sample_weight; then each of `init_rounds`
        rounds keeps every point independently with probability
        min(1, oversampling_factor * n_clusters * w d^2(x, C) / sum_x w d^2(x, C)), where C
        are the candidates so far (two passes a round; d^2 stays on the workers). The
        candidates, weighted by the sample weight of the points nearest to each, are then
        clustered on the client by genfast.KMeans (k-means++ then Lloyd). About
        2 * oversampling_factor * n_clusters * init_rounds candidates; the paper finds 5
        rounds with oversampling 2 enough.
    oversampling_factor : float, default=2.0
    init_rounds : int, default=5
    max_iter : int, default=300
    tol : float, default=1e-4
        Stop when the squared centre shift summed over centres is at most tol times the mean
        feature variance of X.
    random_state : int, RandomState instance or None, default=None

    Attributes
    ----------
    cluster_centers_ : ndarray (n_clusters, n_features), X's float dtype
    labels_ : dask array (n_samples,) int64, the nearest fitted centre (lazy)
    inertia_ : float, sum of weighted squared distances to the fitted centres
    n_iter_ : int
    n_features_in_ : int
    """

    def __init__(self, n_clusters=8, *, init="k-means||", oversampling_factor=2.0, init_rounds=5, max_iter=300,
                 tol=1e-4, random_state=None):
        self.n_clusters = n_clusters
        self.init = init
        self.oversampling_factor = oversampling_factor
        self.init_rounds = init_rounds
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    def _check_params(self, n_samples):
        _check_int("n_clusters", self.n_clusters, 1)
        _check_int("max_iter", self.max_iter, 1)
        _check_int("init_rounds", self.init_rounds, 1)
        _check_real("tol", self.tol)
        _check_real("oversampling_factor", self.oversampling_factor)
        if not self.oversampling_factor > 0:
            raise ValueError(f"oversampling_factor must be > 0, got {self.oversampling_factor!r}")
        if isinstance(self.init, str) and self.init != "k-means||":
            raise ValueError(f"init must be 'k-means||' or an array of shape (n_clusters, n_features), got {self.init!r}")
        if n_samples < self.n_clusters:
            raise ValueError(f"n_samples={n_samples} should be >= n_clusters={self.n_clusters}.")

    @restores_state_on_error
    def fit(self, X, y=None, sample_weight=None):
        """Compute k-means clustering of X (a dask array (n_samples, n_features) chunked by
        rows, or a numpy array), optionally weighted by sample_weight (n_samples,)."""
        X = _row_chunked(self, X, reset=True)
        n_samples, n_features = X.shape
        self._check_params(n_samples)
        random_state = check_random_state(self.random_state)
        weights = None if sample_weight is None else self._sample_weight(sample_weight, X)
        mean, variance, finite = dask.compute(X.mean(axis=0, dtype=np.float64),
                                              X.var(axis=0, dtype=np.float64).mean(), da.isfinite(X).all())
        if not finite:
            raise ValueError("X contains NaN or infinity")
        # Centre the data, as genfast.KMeans does, where it pays: when the data sit farther from
        # the origin than their spread (|mean|^2 > total variance), distances of centred points
        # lose less to rounding; otherwise centring every chunk on every pass is a copy for nothing.
        offset = mean.astype(X.dtype) if mean @ mean > variance * n_features else np.zeros(n_features, X.dtype)
        x_blocks, w_blocks = _blocks(X), _blocks(weights, X.numblocks[0])
        if isinstance(self.init, str):
            centers = self._kmeans_parallel(x_blocks, w_blocks, X.chunks[0], offset, random_state)
        else:
            centers = np.array(self.init, dtype=X.dtype, copy=True)
            if centers.shape != (self.n_clusters, n_features):
                raise ValueError(f"init should be of shape ({self.n_clusters}, {n_features}) "
                                 f"(n_clusters, n_features), got {centers.shape}")
            if not np.isfinite(centers).all():
                raise ValueError("init contains NaN or infinity")
            centers -= offset
        tol = self.tol * float(variance)
        centers, self.inertia_, self.n_iter_ = self._lloyd(x_blocks, w_blocks, offset, centers, tol)
        self.cluster_centers_ = (centers + offset).astype(X.dtype)
        self.labels_ = self.predict(X)
        return self

    @staticmethod
    def _sample_weight(sample_weight, X):
        """sample_weight as a dask array in X's dtype and row chunks, checked (one small pass)."""
        weights = da.asarray(sample_weight).astype(X.dtype)
        if weights.shape != (X.shape[0],):
            raise ValueError(f"sample_weight must have shape ({X.shape[0]},), got {weights.shape}")
        weights = weights.rechunk((X.chunks[0],))
        smallest, total = dask.compute(weights.min(), weights.sum(dtype=np.float64))
        if not smallest >= 0:
            raise ValueError("sample_weight must be non-negative (and not NaN)")
        if not total > 0:
            raise ValueError("sample_weight must have a positive sum")
        return weights

    def _lloyd(self, x_blocks, w_blocks, offset, centers, tol):
        """Lloyd iterations from `centers` (shifted by offset): (centres, their inertia, iterations)."""
        for n_iter in range(1, self.max_iter + 1):
            sums, weights, inertia = _map_reduce(_lloyd_chunk, _sum_parts, [x_blocks, w_blocks], offset, centers)
            if not weights.all():
                self._relocate_empty_clusters(x_blocks, w_blocks, offset, centers, sums, weights)
            centers, shift = _moved_centers(centers, sums, weights)
            if shift <= tol:
                break
        if shift > 0:
            # The centres moved after the last assignment: one more pass for their inertia.
            _, _, inertia = _map_reduce(_lloyd_chunk, _sum_parts, [x_blocks, w_blocks], offset, centers)
        return centers, inertia, n_iter

    @staticmethod
    def _relocate_empty_clusters(x_blocks, w_blocks, offset, centers, sums, weights):
        """genfast.KMeans' relocation (empty clusters onto the farthest points), on the union of
        each chunk's farthest points: it holds the farthest points of all X, in index order."""
        n_empty = int(np.count_nonzero(weights == 0))
        sq_dist, points, labels, point_weights = _map_reduce(
            _farthest_chunk, _concatenate_parts, [x_blocks, w_blocks], offset, centers, n_empty)
        _SingleKMeans._relocate_empty_clusters(_HostArrays(), points, point_weights, labels, sq_dist, sums, weights)

    def _kmeans_parallel(self, x_blocks, w_blocks, chunk_lengths, offset, random_state):
        """k-means|| initial centres (shifted by offset); see the class docstring."""
        n_clusters = self.n_clusters
        new = candidates = self._draw_first_candidate(x_blocks, w_blocks, chunk_lengths, offset, random_state)
        sq_dist = [None] * len(x_blocks)
        for _ in range(self.init_rounds):
            # d^2(x, C) = min(d^2 to the earlier candidates, d^2 to the new ones), kept on the workers
            # (a round that picked no point leaves it as it was)
            if len(new):
                sq_dist = dask.persist(*[delayed(_nearest_sq_dist, pure=True)(x, offset, new, before)
                                         for x, before in zip(x_blocks, sq_dist)])
            (potential,) = _map_reduce(_potential_chunk, _sum_parts, [sq_dist, w_blocks])
            if potential == 0:
                break  # every point sits on a candidate
            seed = int(random_state.randint(np.iinfo(np.int32).max))
            # each point joins C with probability min(1, ell w d^2(x, C) / phi), ell = oversampling * K
            picked = dask.compute(*[
                delayed(_oversample_chunk, pure=True)(x, w, d, offset, self.oversampling_factor * n_clusters / potential,
                                                      seed, i)
                for i, (x, w, d) in enumerate(zip(x_blocks, w_blocks, sq_dist))])
            new = np.concatenate(picked)
            candidates = np.concatenate([candidates, new])
        # Each candidate weighs the sample weight of the points nearest to it.
        _, candidate_weights, _ = _map_reduce(_lloyd_chunk, _sum_parts, [x_blocks, w_blocks], offset, candidates)
        if np.count_nonzero(candidate_weights) < n_clusters:
            raise ValueError(
                f"k-means|| found {np.count_nonzero(candidate_weights)} distinct candidate centres for "
                f"n_clusters={n_clusters}: X has fewer distinct points than clusters, or raise "
                "oversampling_factor or init_rounds")
        reclustered = _SingleKMeans(n_clusters=n_clusters, random_state=random_state)
        return reclustered.fit(candidates, sample_weight=candidate_weights).cluster_centers_

    @staticmethod
    def _draw_first_candidate(x_blocks, w_blocks, chunk_lengths, offset, random_state):
        """One shifted point (1, D) drawn with probability proportional to its sample weight:
        a chunk by its total weight, then a row of it by its weight."""
        unweighted = w_blocks[0] is None
        chunk_totals = np.asarray(chunk_lengths, dtype=np.float64) if unweighted else np.array(
            dask.compute(*[delayed(np.sum)(w, dtype=np.float64) for w in w_blocks]))
        chunk = random_state.choice(len(chunk_totals), p=chunk_totals / chunk_totals.sum())
        row_weights = (np.ones(chunk_lengths[chunk]) if unweighted
                       else w_blocks[chunk].compute().astype(np.float64))
        row = random_state.choice(len(row_weights), p=row_weights / row_weights.sum())
        return delayed(_shifted_rows)(x_blocks[chunk], offset, [row]).compute()

    def predict(self, X):
        """Index of the nearest fitted centre of each sample: a lazy dask array (n_samples,) int64."""
        check_is_fitted(self)
        X = _row_chunked(self, X, reset=False)
        centers = delayed(self.cluster_centers_.astype(X.dtype))
        return X.map_blocks(_nearest_label, centers, drop_axis=1, dtype=np.int64)


# ============================================================================ Gaussian-mixture chunk kernels
def _float64(*arrays):
    return tuple(np.asarray(a, dtype=np.float64) for a in arrays)


def _em_chunk(X, weights, means, precisions_cholesky, covariance_type):
    """(sum of log p(x), N_k, weighted sums, scatter about the chunk's own means) of one
    chunk under the given parameters, float64."""
    log_prob, *stats = ops.gmm_em_step(X, weights, means, precisions_cholesky, covariance_type, check_finite=False)
    return (float(log_prob.sum(dtype=np.float64)), *_float64(*stats))


def _suff_stats_chunk(X, resp, covariance_type):
    """(0, N_k, weighted sums, scatter about the chunk's own means) of one chunk for given
    responsibilities, float64 (the log-likelihood slot of _em_chunk is unused)."""
    return (0.0, *_float64(*ops.gmm_suff_stats(X, resp, covariance_type, check_finite=False)))


def _pool_moments(parts, covariance_type):
    """The statistics of a union of chunks: log-likelihoods, N_k and sums add; each scatter
    moves to the pooled means sums / (N_k + d) (Chan et al.'s parallel variance), so the
    result is centred as the kernel's own scatter over all of those points."""
    return (sum(part[0] for part in parts), *pooled_statistics([part[1:] for part in parts], covariance_type))


def _log_prob(X, weights, means, precisions_cholesky, covariance_type):
    return ops.gmm_log_resp(X, weights, means, precisions_cholesky, covariance_type)


def _log_resp(X, weights, means, precisions_cholesky, covariance_type):
    return ops.gmm_log_resp(X, weights, means, precisions_cholesky, covariance_type, return_log_resp=True)[1]


def _most_probable(*args):
    return _log_resp(*args).argmax(axis=1)


def _responsibilities(*args):
    return np.exp(_log_resp(*args))


# ============================================================================ GaussianMixture
class GaussianMixture(_SingleGaussianMixture):
    """Gaussian mixture fit by EM on a dask array chunked by rows, with genfast's fused
    E-step + M-step kernel on every chunk.

    genfast.GaussianMixture's EM loop, stopping rule, n_init and warm_start, with each EM
    iteration one pass over the chunks: ``ops.gmm_em_step`` gives every chunk's
    log-likelihood, N_k, weighted sums and scatter about its own means; a tree of tasks pools
    them exactly (each scatter moved to the pooled means in float64, Chan et al.), and the
    client runs the M-step. From the same initial parameters (weights_init, means_init,
    precisions_init) the fitted parameters and lower bounds equal genfast.GaussianMixture's to
    rounding. Parameters and attributes are genfast.GaussianMixture's, except:

    init_params : 'kmeans' only: responsibilities from genfast.dask.KMeans labels (k-means||
        initialisation); the other initialisations need the data on one machine.
    device : 'auto' or 'cpu': the chunks run on the workers' CPUs.

    score_samples, predict and predict_proba return lazy dask arrays; score, bic and aic
    compute a float.
    """

    def _check_params(self):
        super()._check_params()
        if self.init_params != "kmeans":
            raise ValueError(f"init_params must be 'kmeans' for dask arrays (the other initialisations need the "
                             f"data on one machine), got {self.init_params!r}")
        if self.device == "cuda":
            raise ValueError("device='cuda' is not supported for dask arrays; use 'auto' or 'cpu'")

    def _fit_input(self, X):
        X = _row_chunked(self, X, reset=True, ensure_min_samples=2)
        if not da.isfinite(X).all().compute():
            raise ValueError("X contains NaN or infinity")
        return X, _Place(X)

    def _initial_statistics(self, X, place, random_state):
        """(N_k, sums, scatter) of the one-hot responsibilities of genfast.dask.KMeans' labels,
        pooled over the chunks; None: no one-point init."""
        labels = KMeans(n_clusters=self.n_components, random_state=random_state).fit(X).labels_
        resp = labels.map_blocks(_one_hot, self.n_components, X.dtype, new_axis=1,
                                 chunks=(labels.chunks[0], (self.n_components,)), dtype=X.dtype)
        _, *stats = _map_reduce(_suff_stats_chunk, partial(_pool_moments, covariance_type=self.covariance_type),
                                [_blocks(X), _blocks(resp)], self.covariance_type)
        return (*stats, None)

    def _em_step(self, X, place, params):
        weights, means, _, prec_chol = params
        loglik, *stats = _map_reduce(_em_chunk, partial(_pool_moments, covariance_type=self.covariance_type),
                                     [_blocks(X)], place.put(weights), place.put(means), place.put(prec_chol),
                                     self.covariance_type)
        return loglik / X.shape[0], self._m_step(X, place, *stats)

    def fit_predict(self, X, y=None):
        """Fit, and return the most probable component of each training sample (lazy)."""
        return self.fit(X).predict(X)

    def _map_e_step(self, X, chunk_function, *, n_columns=None, dtype=None):
        """chunk_function(chunk, weights, means, precisions_cholesky, covariance_type) over the
        row chunks of X: a lazy dask array of n_samples rows (n_columns columns, or 1-d)."""
        check_is_fitted(self)
        X = _row_chunked(self, X, reset=False)
        params = [delayed(np.asarray(a, dtype=X.dtype))
                  for a in (self.weights_, self.means_, self.precisions_cholesky_)]
        shape = {"drop_axis": 1} if n_columns is None else {"chunks": (X.chunks[0], (n_columns,))}
        return X.map_blocks(chunk_function, *params, self.covariance_type, dtype=dtype or X.dtype, **shape)

    def score_samples(self, X):
        """log p(x) of each sample: a lazy dask array (n_samples,) in X's dtype."""
        return self._map_e_step(X, _log_prob)

    def score(self, X, y=None):
        """Mean log-likelihood of X (a float; computes)."""
        return float(self.score_samples(X).mean(dtype=np.float64).compute())

    def predict(self, X):
        """Most probable component of each sample: a lazy dask array (n_samples,) int64."""
        return self._map_e_step(X, _most_probable, dtype=np.int64)

    def predict_proba(self, X):
        """Posterior probability of each component: a lazy dask array (n_samples, n_components)."""
        return self._map_e_step(X, _responsibilities, n_columns=self.n_components)
