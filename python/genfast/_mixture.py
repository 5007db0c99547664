"""genfast.GaussianMixture and genfast.Gaussian: scikit-learn compatible Gaussian models on
genfast's E-step / M-step kernels.

As in scikit-learn, the estimator owns validation, initialisation, the EM loop and
convergence; the passes over the data are genfast.ops kernels:

- E-step: ``ops.gmm_log_resp`` (per-sample log-likelihood and log-responsibilities);
- M-step: ``ops.gmm_suff_stats`` on the log-responsibilities (N_k, weighted sums, centred
  scatter, accumulated in float64).

Only the small per-component parameters (weights, means, covariances, precision Cholesky
factors) live on the host, in float64, between the kernel calls; the (N, D) data and the
(N, K) responsibilities stay where X is (numpy / torch CPU, or a CUDA tensor with
device='cuda'). The loop follows scikit-learn's ``BaseMixture.fit_predict`` step for step
(lower bound = mean log-likelihood of the E-step, ``abs(change) < tol``, best of n_init by
lower bound, a final E-step for the labels), and the M-step uses scikit-learn's formulas
(N_k + 10 eps, covariance = scatter / N_k + reg_covar, weights = N_k / sum N_k), so from the
same initial parameters the lower bound of every iteration matches scikit-learn's
GaussianMixture to rounding.
"""

from __future__ import annotations

import numbers
import warnings
from time import time

import numpy as np
from scipy.linalg import lapack
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import _check_sample_weight, check_array, check_is_fitted

from . import _backend as be
from ._estimator import resolve_device, restores_state_on_error, same_kind, validate_X
from . import ops
from ._pooling import NK_EPS, pooled_statistics

__all__ = ["GaussianMixture", "Gaussian"]

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")
#: Bytes of (rows, K) responsibilities formed at a time: predict and fit_predict's
#: log-responsibilities (in X's dtype), the initial ones' float64 draws.
_PIECE_BYTES = 16 << 20


def _one_hot(labels, n_components, dtype):
    """(len(labels), n_components) responsibilities, 1 at each point's label (k-means init)."""
    resp = np.zeros((len(labels), n_components), dtype=dtype)
    resp[np.arange(len(labels)), labels] = 1
    return resp


# ============================================================================ validation helpers
def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def _check_real(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float, got {value!r}")
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a non-negative finite float, got {value!r}")


def _check_random_state(value):
    try:
        return check_random_state(value)
    except ValueError as exc:
        raise ValueError(f"random_state: {exc}") from exc


def _check_covariance_type(value):
    if not isinstance(value, str) or value not in COVARIANCE_TYPES:
        raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {value!r}")


def _check_device(value):
    if not isinstance(value, str) or value not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {value!r}")


def _param_array(name, value, shape):
    """A user-given initial parameter as a finite float64 array of the given shape."""
    if be.is_torch(value):
        value = be.to_numpy(value)
    try:
        arr = check_array(value, dtype=[np.float64, np.float32], ensure_2d=False, allow_nd=True,
                          ensure_min_samples=0, ensure_min_features=0, input_name=name)
    except (TypeError, ValueError) as exc:
        msg = str(exc) if name in str(exc) else f"{name}: {exc}"
        raise type(exc)(msg) from exc
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {arr.shape}")
    return arr.astype(np.float64)


def _check_weights_init(weights, K):
    w = _param_array("weights_init", weights, (K,))
    if (w < 0).any() or (w > 1).any():
        raise ValueError(f"weights_init must be in the range [0, 1], got min {w.min():.5g}, max {w.max():.5g}")
    atol = 1e-6 if np.asarray(be.to_numpy(weights)).dtype == np.float32 else 1e-8  # scikit-learn's rule
    if not abs(w.sum() - 1.0) <= atol:
        raise ValueError(f"weights_init must sum to 1, got sum(weights_init) = {w.sum():.8g}")
    return w


def _check_precisions_init(precisions, covariance_type, K, D):
    P = _param_array("precisions_init", precisions, _param_shape(covariance_type, K, D))
    if covariance_type in ("diag", "spherical"):
        bad = np.flatnonzero((P <= 0).reshape(K, -1).any(axis=1))
        if len(bad):
            raise ValueError(f"precisions_init must be positive ({covariance_type}); component {int(bad[0])} "
                             f"has a value <= 0")
        return P
    mats = P if covariance_type == "full" else P[None]
    for k, m in enumerate(mats):
        where = f"component {k} of " if covariance_type == "full" else ""
        if not np.allclose(m, m.T):
            raise ValueError(f"precisions_init: {where}the {covariance_type} precision matrix is not symmetric")
        if not (np.linalg.eigvalsh(m) > 0).all():
            raise ValueError(f"precisions_init: {where}the {covariance_type} precision matrix is not positive definite")
    return P


def _param_shape(covariance_type, K, D):
    return {"full": (K, D, D), "tied": (D, D), "diag": (K, D), "spherical": (K,)}[covariance_type]


# ============================================================================ covariance algebra
def _not_pd_error(what, reg_covar, dtype):
    suggestion = max(10 * reg_covar, 1e-6)
    msg = (f"{what} is not positive definite even after adding reg_covar={reg_covar:g} to its diagonal "
           "(for instance a component holding a single point, collapsed or duplicated points, or a "
           f"feature constant within the component). Use a larger reg_covar (e.g. reg_covar={suggestion:g}), "
           "fewer components, or rescale the data.")
    if np.dtype(dtype) == np.float32:
        msg += " Passing float64 data instead of float32 can also help."
    return ValueError(msg)


def _precisions_cholesky(covariances, covariance_type, reg_covar, dtype, *, single=False):
    """Upper-triangular precision Cholesky factors (float64) of float64 covariances, as
    scikit-learn's _compute_precision_cholesky; a component that is not positive definite
    raises a ValueError naming it."""
    def name(k):
        if single:
            return "The covariance of X"
        return "The tied covariance" if covariance_type == "tied" else f"The covariance of component {k}"

    C = covariances
    if covariance_type in ("diag", "spherical"):
        bad = ~(np.isfinite(C) & (C > 0))
        if bad.any():
            k = int(np.flatnonzero(bad.reshape(C.shape[0], -1).any(axis=1))[0])
            raise _not_pd_error(name(k), reg_covar, dtype)
        return 1.0 / np.sqrt(C)
    mats = C if covariance_type == "full" else C[None]
    for k in range(mats.shape[0]):
        if not np.isfinite(mats[k]).all():
            raise _not_pd_error(name(k), reg_covar, dtype)
    try:
        L = np.linalg.cholesky(mats)  # batched: cov_k = L_k L_k^T
    except np.linalg.LinAlgError:
        for k in range(mats.shape[0]):  # find the first failing component to name it
            try:
                np.linalg.cholesky(mats[k])
            except np.linalg.LinAlgError:
                raise _not_pd_error(name(k), reg_covar, dtype) from None
        raise  # pragma: no cover - the batched call failed but no single one did
    # precision = cov^-1 = L^-T L^-1 = P P^T with P = L^-T upper triangular. LAPACK's
    # triangular inverse keeps the zeros exact (a general inverse may leave rounding noise
    # above the diagonal, which the kernels reject as not upper triangular).
    P = np.stack([lapack.dtrtri(l, lower=1)[0] for l in L]).transpose(0, 2, 1)
    return P if covariance_type == "full" else P[0]


def _precisions_cholesky_from_precisions(precisions, covariance_type):
    """P upper triangular with P P^T = precision (scikit-learn's flip trick: the lower
    Cholesky factor of the reversed matrix, reversed)."""
    if covariance_type in ("diag", "spherical"):
        return np.sqrt(precisions)
    mats = precisions if covariance_type == "full" else precisions[None]
    P = np.linalg.cholesky(mats[:, ::-1, ::-1])[:, ::-1, ::-1]
    return np.ascontiguousarray(P if covariance_type == "full" else P[0])


def _covariances_from_precisions_cholesky(P, covariance_type):
    """cov = (P P^T)^-1 = P^-T P^-1 (float64)."""
    if covariance_type in ("diag", "spherical"):
        return 1.0 / (P * P)
    mats = P if covariance_type == "full" else P[None]
    inv = np.linalg.inv(mats)
    cov = inv.transpose(0, 2, 1) @ inv
    return cov if covariance_type == "full" else cov[0]


def _precisions_from_cholesky(P, covariance_type):
    if covariance_type == "full":
        return P @ P.transpose(0, 2, 1)
    if covariance_type == "tied":
        return P @ P.T
    return P * P


def _covariances_from_scatter(nk, scatter, covariance_type, reg_covar, n_features):
    """scikit-learn's M-step covariances from the centred scatter (all float64):
    full scatter_k / N_k + reg I; tied sum_k scatter_k / sum_k N_k + reg I;
    diag scatter_k / N_k + reg; spherical trace_k / (N_k D) + reg."""
    if covariance_type == "full":
        cov = scatter / nk[:, None, None]
        idx = np.arange(n_features)
        cov[:, idx, idx] += reg_covar
    elif covariance_type == "tied":
        cov = scatter / nk.sum()
        cov.flat[:: n_features + 1] += reg_covar
    elif covariance_type == "diag":
        cov = scatter / nk[:, None] + reg_covar
    else:
        cov = scatter / (nk * n_features) + reg_covar
    return cov


# ============================================================================ where the data lives
class _Place:
    """Moves the small host parameters to where X lives and N-sized results back."""

    def __init__(self, X):
        self.torch = be.is_torch(X)
        self.dtype = be.dtype_name(X)
        self.device = X.device if self.torch else None

    def put(self, a):
        a = np.asarray(a, dtype=self.dtype)
        if not self.torch:
            return a
        import torch

        return torch.as_tensor(a, device=self.device)

    def host(self, a, dtype=np.float64):
        return be.to_numpy(a).astype(dtype, copy=False)

    def rows(self, X, index):
        """X[index] for a numpy array of row indices."""
        if not self.torch:
            return X[index]
        import torch

        return X[torch.as_tensor(index, device=self.device)]

    def mean(self, a):
        if self.torch:
            return float(a.double().mean())
        return float(np.mean(a, dtype=np.float64))

    def argmax(self, a):
        return a.argmax(dim=1) if self.torch else np.argmax(a, axis=1)

    def exp(self, a):
        return a.exp() if self.torch else np.exp(a)


def _to_cuda(X):
    import torch

    return torch.as_tensor(X, device=torch.device("cuda", torch.cuda.current_device()))


# ============================================================================ GaussianMixture
class GaussianMixture(DensityMixin, BaseEstimator):
    """Gaussian mixture fit by EM on genfast's fused CPU/CUDA kernels.

    Drop-in for ``sklearn.mixture.GaussianMixture``: same parameters (plus ``device``), same
    attributes, same initialisations (the same random_state draws the same initial
    parameters), same EM loop and stopping rule.

    Parameters
    ----------
    n_components : int, default=1
    covariance_type : {'full', 'tied', 'diag', 'spherical'}, default='full'
    tol : float, default=1e-3
        EM stops when the lower bound (mean log-likelihood) changes by less than tol.
    reg_covar : float, default=1e-6
        Added to the diagonal of every covariance.
    max_iter : int, default=100
        EM iterations per initialisation (0: only initialise).
    n_init : int, default=1
        Initialisations; the one with the largest final lower bound is kept.
    init_params : {'kmeans', 'k-means++', 'random', 'random_from_data'}, default='kmeans'
        'kmeans': responsibilities from genfast.KMeans labels; 'k-means++': one point per
        component from k-means++ seeding; 'random': uniform random responsibilities;
        'random_from_data': n_components distinct random points.
    weights_init : array (n_components,), default=None
    means_init : array (n_components, n_features), default=None
    precisions_init : array, default=None
        Initial precision matrices (inverse covariances), in the shape of covariances_.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialisation and `sample`.
    warm_start : bool, default=False
        Start each fit from the previous solution (n_init is then ignored).
    verbose : int, default=0
    verbose_interval : int, default=10
    device : {'auto', 'cpu', 'cuda'}, default='auto'
        'auto' runs on the GPU when X is a CUDA tensor, else on the CPU; 'cuda' moves numpy
        data to the current CUDA device (needs a usable one).

    Attributes
    ----------
    weights_ : (n_components,)
    means_ : (n_components, n_features)
    covariances_, precisions_, precisions_cholesky_ : full (K, D, D), tied (D, D), diag (K, D),
        spherical (K,). All fitted arrays have X's float dtype (float32 stays float32).
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float, the mean log-likelihood of the best initialisation
    lower_bounds_ : list of float, the lower bound after each iteration of the best run
    n_features_in_ : int
    feature_names_in_ : ndarray, when X has string column names
    """

    def __init__(self, n_components=1, *, covariance_type="full", tol=1e-3, reg_covar=1e-6, max_iter=100,
                 n_init=1, init_params="kmeans", weights_init=None, means_init=None, precisions_init=None,
                 random_state=None, warm_start=False, verbose=0, verbose_interval=10, device="auto"):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.device = device

    # ------------------------------------------------------------------ validation
    def _check_params(self):
        _check_int("n_components", self.n_components, 1)
        _check_covariance_type(self.covariance_type)
        _check_real("tol", self.tol)
        _check_real("reg_covar", self.reg_covar)
        _check_int("max_iter", self.max_iter, 0)
        _check_int("n_init", self.n_init, 1)
        if not isinstance(self.init_params, str) or self.init_params not in INIT_PARAMS:
            raise ValueError(f"init_params must be one of {INIT_PARAMS}, got {self.init_params!r}")
        if not isinstance(self.warm_start, (bool, np.bool_)):
            raise TypeError(f"warm_start must be a bool, got {self.warm_start!r}")
        _check_int("verbose", int(self.verbose) if isinstance(self.verbose, (bool, np.bool_)) else self.verbose, 0)
        _check_int("verbose_interval", self.verbose_interval, 1)
        _check_device(self.device)

    def _check_initial_parameters(self, n_features):
        """Validated float64 copies of weights_init, means_init, precisions_init (or None).
        The constructor parameters themselves are never modified."""
        K, cov = self.n_components, self.covariance_type
        w = None if self.weights_init is None else _check_weights_init(self.weights_init, K)
        m = None if self.means_init is None else _param_array("means_init", self.means_init, (K, n_features))
        p = None if self.precisions_init is None else _check_precisions_init(self.precisions_init, cov, K, n_features)
        return w, m, p

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y=None):
        """Estimate the parameters with EM (best of n_init runs); returns self."""
        self._fit(X)
        return self

    def fit_predict(self, X, y=None):
        """Fit, and return the most probable component of each training sample (the labels
        `predict(X)` gives on the fitted model)."""
        X_in = X
        X, place, best_params = self._fit(X)
        # A final E-step so that fit_predict(X) gives the labels of fit(X).predict(X) whatever
        # max_iter, tol and random_state (as scikit-learn does).
        weights, means, _, prec_chol = best_params
        return self._out(self._most_probable(X, place, weights, means, prec_chol), X_in)

    @restores_state_on_error
    def _fit(self, X):
        """EM from n_init initialisations; sets the fitted attributes and returns (X as the
        kernels take it, its placement, the best parameters in float64)."""
        self._check_params()
        X, place = self._fit_input(X)
        n_samples, n_features = X.shape
        if n_samples < self.n_components:
            raise ValueError(f"n_components={self.n_components} must be <= n_samples={n_samples} "
                             f"(expected n_samples >= n_components)")
        inits = self._check_initial_parameters(n_features)

        do_init = not (self.warm_start and hasattr(self, "converged_"))
        if not do_init and self.means_.shape[1] != n_features:
            raise ValueError(f"X has {n_features} features but the warm-started model was fit on "
                             f"{self.means_.shape[1]}; refit with warm_start=False")
        n_init = self.n_init if do_init else 1
        random_state = _check_random_state(self.random_state)

        max_lower_bound = -np.inf
        best_params, best_n_iter, best_lower_bounds, best_change = None, 0, [], np.nan
        converged_best = False
        for init in range(n_init):
            self._print_verbose_msg_init_beg(init)
            if do_init:
                params = self._initialize_parameters(X, place, random_state, inits)
            else:
                params = self._get_parameters_from_attributes()
            lower_bound = -np.inf if do_init else self.lower_bound_
            lower_bounds = []
            change = np.nan
            if self.max_iter == 0:
                best_params, best_n_iter = params, 0
                continue
            converged = False
            for n_iter in range(1, self.max_iter + 1):
                prev_lower_bound = lower_bound
                lower_bound, params = self._em_step(X, place, params)
                lower_bounds.append(lower_bound)
                change = lower_bound - prev_lower_bound
                self._print_verbose_msg_iter_end(n_iter, change)
                if abs(change) < self.tol:
                    converged = True
                    break
            self._print_verbose_msg_init_end(lower_bound, converged)
            if lower_bound > max_lower_bound or max_lower_bound == -np.inf:
                max_lower_bound = lower_bound
                best_params, best_n_iter, best_lower_bounds = params, n_iter, lower_bounds
                best_change, converged_best = change, converged

        if not converged_best and self.max_iter > 0:
            warnings.warn(
                f"Best performing initialization did not converge: after {best_n_iter} iterations the lower "
                f"bound (mean log-likelihood) still changed by {best_change:.6g} in the last iteration, "
                f"not less than tol={self.tol:g}. Try different init parameters, or increase max_iter, "
                "tol, or check for degenerate data.", ConvergenceWarning, stacklevel=4)

        self._set_parameters(best_params, place.dtype)
        self.converged_ = bool(converged_best)
        self.n_iter_ = best_n_iter
        self.lower_bound_ = float(max_lower_bound)
        self.lower_bounds_ = [float(v) for v in best_lower_bounds]
        return X, place, best_params

    def _fit_input(self, X):
        """(X validated for fitting, as the kernels take it; its placement)."""
        device = resolve_device(self.device, X)
        X = validate_X(self, X, reset=True, ensure_min_samples=2)
        if device == "cuda" and not be.is_torch(X):
            X = _to_cuda(X)
        return X, _Place(X)

    def _initialize_parameters(self, X, place, random_state, inits):
        """Initial (weights, means, covariances, precisions_cholesky), float64 on the host,
        drawing random numbers exactly as scikit-learn's _initialize_parameters."""
        weights_init, means_init, precisions_init = inits
        n_samples, _ = X.shape
        weights = means = covariances = prec_chol = None
        if weights_init is None or means_init is None or precisions_init is None:
            *stats, chosen = self._initial_statistics(X, place, random_state)
            nk, means, covariances = self._parameters_from_statistics(X, place, *stats)
            if self.covariance_type == "tied" and chosen is not None and len(chosen) < n_samples:
                covariances += self._unassigned_second_moment(X, place, chosen) / nk.sum()
            weights = nk / n_samples
        if weights_init is not None:
            weights = weights_init.copy()
        if means_init is not None:
            means = means_init.copy()
        if precisions_init is None:
            prec_chol = _precisions_cholesky(covariances, self.covariance_type, self.reg_covar, place.dtype)
        else:
            prec_chol = _precisions_cholesky_from_precisions(precisions_init, self.covariance_type)
            covariances = _covariances_from_precisions_cholesky(prec_chol, self.covariance_type)
        return weights, means, covariances, prec_chol

    def _initial_statistics(self, X, place, random_state):
        """(N_k, sums, scatter) of scikit-learn's initial responsibilities, float64 on the
        host, and the indices of the points holding them for the one-point-per-component
        inits (else None). Random numbers are drawn exactly as scikit-learn draws them.

        The (n_samples, n_components) responsibilities never exist at once (at N=20M, K=16
        in float64 they took 2.6 GB): the one-point inits need only their K points, and the
        others are formed a piece of rows at a time, each piece's statistics pooled exactly
        (genfast._pooling)."""
        n_samples, _ = X.shape
        K = self.n_components
        dtype = place.dtype
        if self.init_params in ("random_from_data", "k-means++"):
            if self.init_params == "random_from_data":
                chosen = random_state.choice(n_samples, size=K, replace=False)
            else:  # scikit-learn's seeding on the host
                from sklearn.cluster import kmeans_plusplus

                _, chosen = kmeans_plusplus(place.host(X, dtype), K, random_state=random_state)
            # every other point's responsibilities are 0: component k's statistics are point
            # chosen[k]'s
            rows = place.rows(X, chosen)
            stats = ops.gmm_suff_stats(rows, place.put(np.eye(K)), self.covariance_type, check_finite=False)
            return (*(place.host(s) for s in stats), chosen)
        if self.init_params == "kmeans":
            from ._kmeans import KMeans

            km = KMeans(n_clusters=K, n_init=1, random_state=random_state,
                        device="cuda" if place.torch and place.device.type == "cuda" else "cpu")
            labels = be.to_numpy(km.fit(X).labels_)

            def piece(i0, i1):
                return _one_hot(labels[i0:i1], K, dtype)
        else:  # "random": uniform rows, normalised (the same stream, drawn a piece at a time)
            def piece(i0, i1):
                resp = np.asarray(random_state.uniform(size=(i1 - i0, K)), dtype=dtype)
                resp /= resp.sum(axis=1)[:, np.newaxis]
                return resp
        step = max(1, _PIECE_BYTES // (K * 8))  # rows of a piece of float64 draws
        parts = []
        for i0 in range(0, n_samples, step):
            resp = place.put(piece(i0, min(n_samples, i0 + step)))
            stats = ops.gmm_suff_stats(X[i0:i0 + step], resp, self.covariance_type, check_finite=False)
            parts.append([place.host(s) for s in stats])
        return (*(parts[0] if len(parts) == 1 else pooled_statistics(parts, self.covariance_type)), None)

    @staticmethod
    def _unassigned_second_moment(X, place, chosen):
        """sum over the points outside `chosen` of x x^T (float64 (D, D)).

        scikit-learn's tied covariance is (X^T X - sum_k N_k mu_k mu_k^T) / sum_k N_k, which is
        the summed scatter / sum_k N_k only when every row of resp sums to 1. The one-point-per-
        component initialisations ('k-means++', 'random_from_data') leave the other rows at 0,
        so scikit-learn's initial tied covariance also holds their uncentred second moment;
        it is added here so that the same random_state gives scikit-learn's initial model.
        """
        n_samples = X.shape[0]
        w = np.ones((n_samples, 1), dtype=place.dtype)
        w[chosen] = 0
        n, s, scatter = ops.gmm_suff_stats(X, place.put(w), "tied", check_finite=False)
        n, s = place.host(n)[0], place.host(s)[0]
        # scatter = sum w (x - m)(x - m)^T with m = s / (n + d), d = 10 eps:
        #         = sum w x x^T - s s^T (n + 2 d) / (n + d)^2
        return place.host(scatter) + np.outer(s, s) * (n + 2 * NK_EPS) / (n + NK_EPS) ** 2

    def _parameters_from_statistics(self, X, place, nk, sums, scatter):
        """(N_k + 10 eps, means, covariances), float64 on the host, from the M-step statistics."""
        nk = place.host(nk) + NK_EPS
        means = place.host(sums) / nk[:, None]
        covariances = _covariances_from_scatter(nk, place.host(scatter), self.covariance_type,
                                                float(self.reg_covar), X.shape[1])
        return nk, means, covariances

    def _most_probable(self, X, place, weights, means, prec_chol):
        """argmax_k log p(k | x) of every sample, from the E-step on pieces of rows of X, so
        that the (N, K) log-responsibilities never exist at once (at N=20M, K=16 float32 they
        took 1.28 GB)."""
        weights, means, prec_chol = place.put(weights), place.put(means), place.put(prec_chol)
        n = X.shape[0]
        rows = max(1, _PIECE_BYTES // (means.shape[0] * np.dtype(place.dtype).itemsize))
        labels = None
        for i0 in range(0, n, rows):
            _, log_resp = ops.gmm_log_resp(X[i0:i0 + rows], weights, means, prec_chol, self.covariance_type,
                                           return_log_resp=True, check_finite=False)
            piece = place.argmax(log_resp)
            if labels is None:
                labels = piece.new_empty(n) if place.torch else np.empty(n, dtype=piece.dtype)
            labels[i0:i0 + rows] = piece
        return labels

    def _em_step(self, X, place, params):
        """scikit-learn's E-step then M-step in one pass over X, without the (N, K)
        responsibilities: (mean log-likelihood under `params`, the next parameters)."""
        weights, means, _, prec_chol = params
        log_prob, *stats = ops.gmm_em_step(X, place.put(weights), place.put(means), place.put(prec_chol),
                                           self.covariance_type, check_finite=False)
        return place.mean(log_prob), self._m_step(X, place, *stats)

    def _m_step(self, X, place, nk, sums, scatter):
        """scikit-learn's M-step from the statistics of the responsibilities: the next
        (weights, means, covariances, precisions_cholesky), float64 on the host."""
        nk, means, covariances = self._parameters_from_statistics(X, place, nk, sums, scatter)
        weights = nk / nk.sum()
        prec_chol = _precisions_cholesky(covariances, self.covariance_type, float(self.reg_covar), place.dtype)
        return weights, means, covariances, prec_chol

    def _get_parameters_from_attributes(self):
        return tuple(np.asarray(a, dtype=np.float64) for a in
                     (self.weights_, self.means_, self.covariances_, self.precisions_cholesky_))

    def _set_parameters(self, params, dtype):
        weights, means, covariances, prec_chol = params
        self.weights_ = weights.astype(dtype)
        self.means_ = means.astype(dtype)
        self.covariances_ = covariances.astype(dtype)
        self.precisions_cholesky_ = prec_chol.astype(dtype)
        self.precisions_ = _precisions_from_cholesky(prec_chol, self.covariance_type).astype(dtype)

    # ------------------------------------------------------------------ verbose output (as scikit-learn)
    def _print_verbose_msg_init_beg(self, n_init):
        if self.verbose == 1:
            print("Initialization %d" % n_init)
        elif self.verbose >= 2:
            print("Initialization %d" % n_init)
            self._init_prev_time = time()
            self._iter_prev_time = self._init_prev_time

    def _print_verbose_msg_iter_end(self, n_iter, diff_ll):
        if n_iter % self.verbose_interval == 0:
            if self.verbose == 1:
                print("  Iteration %d" % n_iter)
            elif self.verbose >= 2:
                cur_time = time()
                print("  Iteration %d\t time lapse %.5fs\t ll change %.5f"
                      % (n_iter, cur_time - self._iter_prev_time, diff_ll))
                self._iter_prev_time = cur_time

    def _print_verbose_msg_init_end(self, lb, converged):
        msg = "converged" if converged else "did not converge"
        if self.verbose == 1:
            print(f"Initialization {msg}.")
        elif self.verbose >= 2:
            t = time() - self._init_prev_time
            print(f"Initialization {msg}. time lapse {t:.5f}s\t lower bound {lb:.5f}.")

    # ------------------------------------------------------------------ prediction
    def _predict_input(self, X):
        """(validated X where the model computes, its placement)."""
        check_is_fitted(self)
        device = resolve_device(self.device, X)
        X = validate_X(self, X, reset=False)
        if device == "cuda" and not be.is_torch(X):
            X = _to_cuda(X)
        return X, _Place(X)

    def _log_prob_resp(self, X, place, return_log_resp):
        return ops.gmm_log_resp(X, place.put(self.weights_), place.put(self.means_),
                                place.put(self.precisions_cholesky_), self.covariance_type,
                                return_log_resp=return_log_resp, check_finite=False)

    @staticmethod
    def _out(result, X_in):
        """Results in the kind of the caller's X: numpy for numpy (also when computed on the
        GPU), torch for torch."""
        if not be.is_torch(X_in) and be.is_torch(result):
            return result.cpu().numpy()
        return same_kind(result, X_in)

    def score_samples(self, X):
        """log p(x) of each sample (n_samples,), in X's dtype."""
        Xv, place = self._predict_input(X)
        return self._out(self._log_prob_resp(Xv, place, False), X)

    def score(self, X, y=None):
        """Mean log-likelihood of X (a float)."""
        Xv, place = self._predict_input(X)
        return place.mean(self._log_prob_resp(Xv, place, False))

    def predict(self, X):
        """Most probable component of each sample (n_samples,) int64."""
        Xv, place = self._predict_input(X)
        return self._out(self._most_probable(Xv, place, self.weights_, self.means_, self.precisions_cholesky_), X)

    def predict_proba(self, X):
        """Posterior probability of each component (n_samples, n_components)."""
        Xv, place = self._predict_input(X)
        _, log_resp = self._log_prob_resp(Xv, place, True)
        return self._out(place.exp(log_resp), X)

    def sample(self, n_samples=1):
        """(X (n_samples, n_features) float64, component labels (n_samples,) int64), drawn
        from the fitted mixture with random_state exactly as scikit-learn does."""
        check_is_fitted(self)
        _check_int("n_samples", n_samples, 1)
        n_features = self.means_.shape[1]
        rng = _check_random_state(self.random_state)
        weights = np.asarray(self.weights_, dtype=np.float64)
        if self.weights_.dtype != np.float64:
            # float32 weights can sum to 1 + 1e-7, which numpy's multinomial rejects.
            weights = weights / weights.sum()
        n_samples_comp = rng.multinomial(n_samples, weights)
        if self.covariance_type == "full":
            X = np.vstack([rng.multivariate_normal(mean, cov, int(n))
                           for mean, cov, n in zip(self.means_, self.covariances_, n_samples_comp)])
        elif self.covariance_type == "tied":
            X = np.vstack([rng.multivariate_normal(mean, self.covariances_, int(n))
                           for mean, n in zip(self.means_, n_samples_comp)])
        else:
            X = np.vstack([mean + rng.standard_normal(size=(n, n_features)) * np.sqrt(cov)
                           for mean, cov, n in zip(self.means_, self.covariances_, n_samples_comp)])
        y = np.concatenate([np.full(int(n), k, dtype=np.int64) for k, n in enumerate(n_samples_comp)])
        return np.asarray(X, dtype=np.float64), y

    def _n_parameters(self):
        """Number of free parameters of the model."""
        K, D = self.means_.shape
        cov_params = {"full": K * D * (D + 1) / 2.0, "diag": K * D, "tied": D * (D + 1) / 2.0,
                      "spherical": K}[self.covariance_type]
        return int(cov_params + D * K + K - 1)

    def bic(self, X):
        """Bayesian information criterion on X (lower is better)."""
        n = len(X)
        return -2 * self.score(X) * n + self._n_parameters() * np.log(n)

    def aic(self, X):
        """Akaike information criterion on X (lower is better)."""
        return -2 * self.score(X) * len(X) + 2 * self._n_parameters()


# ============================================================================ Gaussian
def _statistics_fit(X, total_weight):
    """Whether the M-step statistics of X with weights summing to total_weight fit X's dtype:
    the kernel returns them in it, and float32 sums (up to total max|x|) or scatter (up to
    total 4 D max|x|^2) beyond its range come back inf (e.g. one float32 point at 1e38)."""
    if be.dtype_name(X) == "float64" or X.shape[0] == 0:
        return True
    largest = float(X.abs().max()) if be.is_torch(X) else float(np.abs(X).max())
    limit = float(np.finfo(np.float32).max) / 2
    return total_weight * largest < limit and total_weight * 4 * X.shape[1] * largest * largest < limit


class Gaussian(DensityMixin, BaseEstimator):
    """Maximum-likelihood multivariate Gaussian on genfast's kernels (one component of
    GaussianMixture's E-step and M-step, with responsibilities = sample weights).

    Parameters
    ----------
    covariance_type : {'full', 'tied', 'diag', 'spherical'}, default='full'
        'full' / 'tied' (the same for one Gaussian): a (D, D) covariance; 'diag': per-feature
        variances (D,); 'spherical': one variance, the mean of the per-feature variances.
    reg_covar : float, default=0.0
        Added to the diagonal of the covariance (0: the exact maximum-likelihood estimate).
    device : {'auto', 'cpu', 'cuda'}, default='auto'

    Attributes
    ----------
    mean_ : (n_features,)
    covariance_ : full/tied (D, D), diag (D,), spherical a scalar
    precision_cholesky_ : P upper triangular with P P^T = covariance_^-1, shaped like
        covariance_ (diag / spherical: 1 / sqrt(variance))
    n_features_in_ : int
    All in X's float dtype.
    """

    def __init__(self, covariance_type="full", *, reg_covar=0.0, device="auto"):
        self.covariance_type = covariance_type
        self.reg_covar = reg_covar
        self.device = device

    @restores_state_on_error
    def fit(self, X, y=None, sample_weight=None):
        """Weighted maximum-likelihood mean and covariance of X (n_samples, n_features)."""
        _check_covariance_type(self.covariance_type)
        _check_real("reg_covar", self.reg_covar)
        _check_device(self.device)
        device = resolve_device(self.device, X)
        X = validate_X(self, X, reset=True)
        n_samples, n_features = X.shape
        dtype = be.dtype_name(X)
        if n_samples < 2 and self.reg_covar == 0:
            raise ValueError(f"n_samples={n_samples}: a covariance needs at least 2 samples with reg_covar=0 "
                             "(one sample has a zero covariance); pass more samples or reg_covar > 0")
        if device == "cuda" and not be.is_torch(X):
            X = _to_cuda(X)
        place = _Place(X)
        # The weights are the responsibilities of the single component, scaled (which does not
        # change the estimate) so that they sum to at least 32: then N_k + 10 eps == N_k in
        # float64, the kernel's guard against empty components has no effect, and the mean of
        # a constant feature is exact (its variance exactly 0).
        if sample_weight is None:
            scale = 2.0 ** max(0, int(np.ceil(np.log2(32 / n_samples))))  # a power of 2: exact
            resp = np.full((n_samples, 1), scale, dtype=dtype)
        else:
            try:
                sw = _check_sample_weight(be.to_numpy(sample_weight), np.empty((n_samples, 0)), dtype=np.float64)
            except (TypeError, ValueError) as exc:
                if "sample_weight" in str(exc):
                    raise
                raise type(exc)(f"sample_weight: {exc}") from exc
            if (sw < 0).any():
                raise ValueError("sample_weight must be non-negative")
            total = sw.sum()
            if not total > 0:
                raise ValueError("sample_weight must have a positive sum")
            resp = (sw * (max(n_samples, 48) / total)).astype(dtype)[:, None]
        cov_type = self.covariance_type
        X_stats = X if _statistics_fit(X, float(resp.sum(dtype=np.float64))) else (
            X.double() if be.is_torch(X) else X.astype(np.float64))
        nk, sums, scatter = ops.gmm_suff_stats(X_stats, place.put(resp), cov_type, check_finite=False)
        nk = place.host(nk)
        mean = place.host(sums)[0] / nk[0]
        scatter = place.host(scatter)
        reg = float(self.reg_covar)
        if cov_type in ("full", "tied"):
            cov = (scatter[0] if cov_type == "full" else scatter) / nk[0]
            cov.flat[:: n_features + 1] += reg
            prec_chol = _precisions_cholesky(cov, "tied", reg, dtype, single=True)
        elif cov_type == "diag":
            cov = scatter[0] / nk[0] + reg
            prec_chol = _precisions_cholesky(cov[None], "diag", reg, dtype, single=True)[0]
        else:
            cov = scatter[0] / (nk[0] * n_features) + reg
            prec_chol = _precisions_cholesky(np.array([cov]), "spherical", reg, dtype, single=True)[0]
        self.mean_ = mean.astype(dtype)
        if cov_type == "spherical":
            self.covariance_ = np.asarray(cov, dtype=dtype)[()]
            self.precision_cholesky_ = np.asarray(prec_chol, dtype=dtype)[()]
        else:
            self.covariance_ = cov.astype(dtype)
            self.precision_cholesky_ = prec_chol.astype(dtype)
        return self

    def _component_params(self):
        """The fitted Gaussian as a one-component mixture, in the kernel's shapes."""
        P = np.asarray(self.precision_cholesky_)
        if self.covariance_type in ("full", "diag"):
            P = P[None]
        elif self.covariance_type == "spherical":
            P = P.reshape(1)
        return np.ones(1), np.asarray(self.mean_)[None], P

    def score_samples(self, X):
        """log N(x | mean_, covariance_) of each sample (n_samples,), in X's dtype."""
        check_is_fitted(self)
        X_in = X
        device = resolve_device(self.device, X)
        X = validate_X(self, X, reset=False)
        if device == "cuda" and not be.is_torch(X):
            X = _to_cuda(X)
        place = _Place(X)
        w, m, P = self._component_params()
        log_prob = ops.gmm_log_resp(X, place.put(w), place.put(m), place.put(P), self.covariance_type,
                                    check_finite=False)
        return GaussianMixture._out(log_prob, X_in)

    def score(self, X, y=None):
        """Mean log-likelihood of X (a float)."""
        return float(np.mean(be.to_numpy(self.score_samples(X)), dtype=np.float64))

    def sample(self, n_samples=1, random_state=None):
        """(n_samples, n_features) float64 draws from the fitted Gaussian."""
        check_is_fitted(self)
        _check_int("n_samples", n_samples, 1)
        rng = _check_random_state(random_state)
        mean = np.asarray(self.mean_, dtype=np.float64)
        cov = np.asarray(self.covariance_, dtype=np.float64)
        if self.covariance_type in ("full", "tied"):
            return rng.multivariate_normal(mean, cov, int(n_samples))
        return mean + rng.standard_normal(size=(int(n_samples), mean.shape[0])) * np.sqrt(cov)
