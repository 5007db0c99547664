"""Gaussian-mixture EM benchmark: genfast against scikit-learn and torch, in one run.

Every peer runs the same number of EM iterations (10) on the same data from the same initial
parameters (weights, means, precisions), for each covariance type (full, tied, diag,
spherical) and each float type (float64, float32), with the same number of threads, and is
timed the same way. The E-step and the M-step are also timed on their own where a peer
exposes them. The E-step's FLOP floor at numpy's matmul rate, measured in the same run, shows
how far each E-step is from the machine's arithmetic limit. The final parameters of every
peer are scored the same way (float64 mean log-likelihood of the data), so the results are
comparable.

    python benchmarks/bench_gmm.py --quick           # small sizes, about a minute on 2 cores
    python benchmarks/bench_gmm.py                   # N=100,000 D=16 K=32, 3 repeats
    python benchmarks/bench_gmm.py --covariance-types full,diag --dtypes float64
    python benchmarks/bench_gmm.py --peers genfast,sklearn --sizes "200000,32,16"
    python benchmarks/bench_gmm.py --device cuda     # torch eager/compile on the GPU

Results are printed as tables and written as JSON to
benchmarks/results/gmm-<device>-<UTC timestamp>.json (and gmm-<device>-latest.json).
See benchmarks/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback
import warnings

import numpy as np  # noqa: E402

from . import _harness as H  # noqa: E402

NAME = "gmm"
FULL_SIZES = [(100_000, 16, 32)]
QUICK_SIZES = [(20_000, 16, 16)]
SQUARE = 4096
QUICK_SQUARE = 2048
REG_COVAR = 1e-6
COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]
DTYPES = ["float64", "float32"]
#: scikit-learn's (and genfast's) guard on N_k: 10 * float64 eps.
NK_EPS = 10 * np.finfo(np.float64).eps
#: Row names, in table order. "genfast" on the command line selects both genfast rows.
PEERS = ["genfast", "genfast ops", "sklearn", "torch", "torch.compile"]
PEER_ALIASES = {"genfast": ["genfast", "genfast ops"], "genfast-ops": ["genfast ops"],
                "genfast_ops": ["genfast ops"], "genfast ops": ["genfast ops"],
                "sklearn": ["sklearn"], "scikit-learn": ["sklearn"],
                "torch": ["torch"], "torch.compile": ["torch.compile"],
                "torch-compile": ["torch.compile"]}
#: Speed-up over scikit-learn per EM iteration that issue 3 asks of genfast.
TARGET_VS_SKLEARN = {"full": 20.0, "tied": 20.0, "diag": 10.0, "spherical": 10.0}
#: FLOPs of one E-step (the Mahalanobis terms; see flops_e_step), as text for the JSON.
FLOP_RULES = {
    "full": "N*K*(D^2 + 3D)",
    "tied": "N*D^2 + 2*N*K*D",
    "diag": "4*N*K*D",
    "spherical": "2*N*K*D",
}


def flops_e_step(covariance_type: str, N: int, D: int, K: int) -> float:
    """Arithmetic of the cheapest exact E-step formulation, a multiply-add counted as 2 flops:

    - full: per point and component, y = (x - mu_k)^T P_k with P_k upper triangular
      (D(D+1)/2 multiply-adds, about D^2 flops), then ||y||^2 and the subtraction: 3D.
    - tied: y = x^T P once per point (D^2), then per component y . (P^T mu_k) as one GEMM
      (2D); ||y||^2 and ||P^T mu_k||^2 are O(N D + K D).
    - diag: [x^2, x] . [p_k^2, -2 p_k^2 mu_k] as one GEMM, 2D multiply-adds = 4D.
    - spherical: x . mu_k as one GEMM (2D), as in the k-means distances; ||x||^2 is O(N D).

    The N*K exponentials of the log-sum-exp are not counted, so the floor is loosest where
    D is small (diag, spherical).
    """
    if covariance_type == "full":
        return float(N) * K * (D * D + 3 * D)
    if covariance_type == "tied":
        return float(N) * D * D + 2.0 * N * K * D
    if covariance_type == "diag":
        return 4.0 * N * K * D
    if covariance_type == "spherical":
        return 2.0 * N * K * D
    raise ValueError(covariance_type)


# --------------------------------------------------------------------------- CLI
def _choices(allowed: list[str], what: str):
    def parse(text: str) -> list[str]:
        out = []
        for name in text.split(","):
            name = name.strip().lower()
            if not name:
                continue
            if name not in allowed:
                raise argparse.ArgumentTypeError(f"unknown {what} {name!r}; choose from {','.join(allowed)}")
            if name not in out:
                out.append(name)
        if not out:
            raise argparse.ArgumentTypeError(f"no {what} given")
        return [a for a in allowed if a in out]
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See benchmarks/README.md for the columns and the JSON layout.")
    p.add_argument("--quick", action="store_true",
                   help=f"small size (N=20000 D=16 K=16), 1 repeat, {QUICK_SQUARE}^3 GEMM for the floor")
    p.add_argument("--sizes", type=lambda text: H.parse_sizes(text, points_per_cluster=2), default=None, metavar="N,D,K;...",
                   help="problem sizes, overriding the default N=100000 D=16 K=32 (and --quick's)")
    p.add_argument("--peers", type=lambda text: H.parse_peers(text, PEER_ALIASES, PEERS), default=list(PEERS), metavar="LIST",
                   help="comma-separated subset of genfast,genfast-ops,sklearn,torch,torch.compile "
                   "(default: all; 'genfast' means both genfast rows)")
    p.add_argument("--covariance-types", type=_choices(COVARIANCE_TYPES, "covariance type"),
                   default=list(COVARIANCE_TYPES), metavar="LIST",
                   help="subset of full,tied,diag,spherical (default: all)")
    p.add_argument("--dtypes", type=_choices(DTYPES, "dtype"), default=list(DTYPES), metavar="LIST",
                   help="subset of float64,float32 (default: both)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cpu (default), or cuda: genfast on torch CUDA tensors against torch on CUDA")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed fits per peer; the median is reported (default 3, --quick 1)")
    p.add_argument("--iters", type=int, default=10, help="EM iterations per fit (default 10)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for every peer (default: all CPUs this process may use)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the initial parameters")
    p.add_argument("--square", type=int, default=None,
                   help=f"side of the square GEMMs that give the matmul rate (default {SQUARE}, "
                   f"--quick {QUICK_SQUARE}; 0 skips them and the floor)")
    p.add_argument("--out", default=str(H.RESULTS_DIR), help="folder for the JSON results")
    p.add_argument("--no-json", action="store_true", help="print the tables only")
    return p


# --------------------------------------------------------------------------- data and init
def make_data(N: int, D: int, K: int, rng) -> tuple[np.ndarray, dict]:
    """float64 samples of a K-component Gaussian mixture: centres ~ N(0, 1.5^2 I), component
    k's noise A_k z with A_k = I + 0.5 G_k / sqrt(D) (G_k standard normal), so the components
    are anisotropic, correlated (covariance condition numbers of order 10-100) and
    overlapping, and EM does not converge within 10 iterations."""
    centres = 1.5 * rng.standard_normal((K, D))
    A = np.eye(D) + 0.5 * rng.standard_normal((K, D, D)) / math.sqrt(D)
    labels = rng.integers(0, K, size=N)
    X = rng.standard_normal((N, D))
    for k in range(K):
        idx = np.flatnonzero(labels == k)
        X[idx] = centres[k] + X[idx] @ A[k].T
    return np.ascontiguousarray(X), {
        "kind": "Gaussian mixture samples", "components": K, "centre_std": 1.5,
        "noise": "A_k z, A_k = I + 0.5 G_k / sqrt(D), G_k and z standard normal",
    }


def _nearest(X, C):
    """Index of the nearest centre of every row (float64, in row tiles)."""
    c_sq = np.einsum("ij,ij->i", C, C)
    out = np.empty(X.shape[0], dtype=np.int64)
    step = max(1, (32 * 2**20) // (8 * C.shape[0]))
    for s in range(0, X.shape[0], step):
        out[s:s + step] = np.argmin(c_sq - 2.0 * X[s:s + step] @ C.T, axis=1)
    return out


def _flip_cholesky(prec):
    """Upper-triangular P with P P^T = prec (scikit-learn's flip trick), batched."""
    return np.linalg.cholesky(prec[..., ::-1, ::-1])[..., ::-1, ::-1]


def make_init(X: np.ndarray, K: int, rng, lloyd_iters: int = 3) -> tuple[dict, dict]:
    """The initial parameters every peer starts from, for every covariance type (float64).

    k-means-like: K distinct rows of X chosen by the seed, `lloyd_iters` Lloyd iterations
    (float64, an empty cluster keeps its centre), then the hard assignment of every point to
    its nearest centre gives weights N_k / N, means, and covariances (+ reg_covar) in each
    covariance type; a cluster with fewer than D + 1 points gets the covariance of all of X.
    The precisions given to the estimators are the inverse covariances; the precision
    Cholesky factors the loops start from are derived from those precisions exactly as
    scikit-learn's and genfast's estimators derive them (the flip trick), so every peer's
    starting point is the same to rounding.
    """
    N, D = X.shape
    rows = np.sort(rng.choice(N, size=K, replace=False))
    C = X[rows].copy()
    for _ in range(lloyd_iters):
        lab = _nearest(X, C)
        counts = np.bincount(lab, minlength=K)
        sums = np.zeros((K, D))
        np.add.at(sums, lab, X)
        keep = counts > 0
        C[keep] = sums[keep] / counts[keep, None]
    lab = _nearest(X, C)
    counts = np.bincount(lab, minlength=K).astype(np.float64)
    weights = counts / N
    means = np.zeros((K, D))
    scatter = np.zeros((K, D, D))
    glob = np.cov(X.T, bias=True)
    small = []
    for k in range(K):
        Xk = X[lab == k]
        if len(Xk) == 0:
            means[k] = C[k]
        else:
            means[k] = Xk.mean(axis=0)
        if len(Xk) < D + 1:
            small.append(k)
            scatter[k] = glob * max(counts[k], 1.0)
        else:
            Y = Xk - means[k]
            scatter[k] = Y.T @ Y
    if (weights == 0).any():  # a weight of 0 gives log 0; keep it tiny instead
        weights = np.maximum(weights, 1.0 / N)
        weights /= weights.sum()
    nk = np.maximum(counts, 1.0)
    eye = np.eye(D)
    covs = {
        "full": scatter / nk[:, None, None] + REG_COVAR * eye,
        "tied": scatter.sum(axis=0) / nk.sum() + REG_COVAR * eye,
        "diag": np.einsum("kii->ki", scatter) / nk[:, None] + REG_COVAR,
        "spherical": np.einsum("kii->k", scatter) / (nk * D) + REG_COVAR,
    }
    init = {}
    for ct, cov in covs.items():
        if ct in ("full", "tied"):
            prec = np.linalg.inv(cov)
            prec = 0.5 * (prec + np.swapaxes(prec, -1, -2))
            pchol = np.ascontiguousarray(_flip_cholesky(prec))
        else:
            prec = 1.0 / cov
            pchol = np.sqrt(prec)
        init[ct] = {"weights": weights, "means": means, "precisions": prec,
                    "precisions_cholesky": pchol}
    info = {"method": f"{K} distinct rows of X chosen by the seed, {lloyd_iters} Lloyd iterations "
                      "(float64), hard assignment -> weights, means, covariances + reg_covar; "
                      "precisions = inverse covariances",
            "rows_head": rows[:16].tolist(), "cluster_sizes_min": int(counts.min()),
            "cluster_sizes_max": int(counts.max()), "clusters_given_global_covariance": small}
    return init, info


def mean_log_likelihood(X64, weights, means, pchol, covariance_type) -> float:
    """Mean over the points of log p(x) in float64 (the common score of every peer's final
    parameters): log-sum-exp over components of log w_k + log N(x | mu_k, (P_k P_k^T)^-1)."""
    N, D = X64.shape
    w = np.asarray(weights, dtype=np.float64)
    mu = np.asarray(means, dtype=np.float64)
    P = np.asarray(pchol, dtype=np.float64)
    K = mu.shape[0]
    lj = np.empty((N, K))
    with np.errstate(divide="ignore"):
        logw = np.log(w)
    for k in range(K):
        if covariance_type == "full":
            y, logdet = (X64 - mu[k]) @ P[k], np.log(np.diag(P[k])).sum()
        elif covariance_type == "tied":
            y, logdet = (X64 - mu[k]) @ P, np.log(np.diag(P)).sum()
        elif covariance_type == "diag":
            y, logdet = (X64 - mu[k]) * P[k], np.log(P[k]).sum()
        else:
            y, logdet = (X64 - mu[k]) * P[k], D * np.log(P[k])
        lj[:, k] = -0.5 * (D * math.log(2 * math.pi) + np.einsum("ij,ij->i", y, y)) + logdet + logw[k]
    m = lj.max(axis=1)
    return float(np.mean(m + np.log(np.exp(lj - m[:, None]).sum(axis=1))))


# --------------------------------------------------------------------------- context
class Case:
    """One problem size: the data and the initial parameters every peer shares."""

    def __init__(self, N, D, K, args):
        self.N, self.D, self.K = N, D, K
        rng = np.random.default_rng(args.seed)
        self.X64, self.data_info = make_data(N, D, K, rng)
        self.init, self.init_info = make_init(self.X64, K, rng)
        self.X32 = self.X64.astype(np.float32)


class Run:
    """One (size, covariance type, dtype) combination and everything its peers share."""

    def __init__(self, case: Case, covariance_type: str, dtype: str, args, torch=None):
        self.case = case
        self.N, self.D, self.K = case.N, case.D, case.K
        self.ct = covariance_type
        self.dtype = dtype
        self.iters = args.iters
        self.repeats = args.repeats
        self.device = args.device
        self.torch = torch
        self.X = case.X64 if dtype == "float64" else case.X32
        # The same initial arrays for every peer, in the run's dtype (so scikit-learn's first
        # E-step is not silently float64 on float32 data).
        self.init = {k: np.ascontiguousarray(np.asarray(v, dtype=dtype))
                     for k, v in case.init[covariance_type].items()}
        self._X_dev = None

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def X_dev(self):
        """X as a torch CUDA tensor - copied once per run, outside every timing."""
        if self._X_dev is None:
            self._X_dev = self.torch.from_numpy(self.X).to("cuda")
            self.sync()
        return self._X_dev

    def release(self):
        self._X_dev = None
        if self.cuda:
            self.torch.cuda.empty_cache()


class Skip(Exception):
    """A peer that cannot run here (not installed, no CUDA kernel, ...): reported, not an error."""


def _timing(run: Run, fn, warmup_fn=None, repeats=None, pause=True):
    if pause:  # before a peer's first timing: let other libraries' idle threads go to sleep
        time.sleep(0.2)
    return H.time_call(fn, repeats=repeats or run.repeats, warmup=1, warmup_fn=warmup_fn, sync=run.sync)


def _quiet(fn):
    """fn with warnings silenced (scikit-learn and genfast warn that tol=0 never converges)."""
    def call(*a, **k):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*a, **k)
    return call


def _host64(a):
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


# --------------------------------------------------------------------------- peers
# Each peer returns dict(timing=Timing of whole fits, n_iter=int, e_timing/m_timing=Timing or
# None, lower_bound=float (mean log-likelihood at the last E-step), final=(w, mu, P) float64,
# notes=[...], params={...}, extra={...}).

def _genfast(mods, run: Run):
    genfast = mods.get("genfast")
    if genfast is None:
        raise Skip(mods["_why"]["genfast"])
    if run.cuda and not genfast.config()["cuda"]["usable"]:
        raise Skip(f"genfast CUDA backend not usable: {genfast.config()['cuda']['status']}")
    return genfast


def peer_genfast(run: Run, mods):
    genfast = _genfast(mods, run)
    GM = getattr(genfast, "GaussianMixture", None)
    if GM is None:
        raise Skip("genfast.GaussianMixture is not in this genfast build yet "
                   "(python/genfast/_mixture.py; rebuild genfast into the environment)")
    X = run.X_dev() if run.cuda else run.X
    init = run.init
    params = dict(n_components=run.K, covariance_type=run.ct, weights_init=init["weights"],
                  means_init=init["means"], precisions_init=init["precisions"],
                  max_iter=run.iters, tol=0.0, reg_covar=REG_COVAR)

    @_quiet
    def fit(max_iter=run.iters):
        return GM(**{**params, "max_iter": max_iter}).fit(X)

    try:
        t = _timing(run, fit, lambda: fit(1))
    except NotImplementedError as e:
        raise Skip(f"genfast.GaussianMixture: {e}") from None
    gm = t.output
    return dict(timing=t, n_iter=int(gm.n_iter_), lower_bound=float(gm.lower_bound_),
                final=(_host64(gm.weights_), _host64(gm.means_), _host64(gm.precisions_cholesky_)),
                params={"class": "genfast.GaussianMixture",
                        **{k: v for k, v in params.items() if not k.endswith("_init")},
                        "init": "weights_init, means_init, precisions_init (arrays)",
                        "input": "torch CUDA tensor" if run.cuda else "numpy"},
                notes=["timed: GaussianMixture(...).fit(X) / n_iter_ (includes validation, "
                       "initialisation from the given arrays and the final E-step for the labels)"])


def _chol_update(nk, sums, scatter, ct, D, dtype):
    """The M-step's parameter update from genfast.ops.gmm_suff_stats, done by the same
    float64 helpers genfast.GaussianMixture uses: N_k + 10 eps, means, covariances +
    reg_covar, then the precision Cholesky factors. Returns (weights, means, P) in dtype."""
    from genfast._mixture import _covariances_from_scatter, _precisions_cholesky

    nk = np.asarray(nk, dtype=np.float64) + NK_EPS
    means = np.asarray(sums, dtype=np.float64) / nk[:, None]
    cov = _covariances_from_scatter(nk, np.asarray(scatter, dtype=np.float64), ct, REG_COVAR, D)
    P = _precisions_cholesky(cov, ct, REG_COVAR, dtype)
    w = nk / nk.sum()
    return tuple(np.ascontiguousarray(a, dtype=dtype) for a in (w, means, P))


def peer_genfast_ops(run: Run, mods):
    genfast = _genfast(mods, run)
    ops = genfast.ops
    for name in ("gmm_log_resp", "gmm_suff_stats", "gmm_em_step"):
        if not hasattr(ops, name):
            raise Skip(f"genfast.ops.{name} is not in this genfast build")
    X = run.X_dev() if run.cuda else run.X
    ct, D, dtype = run.ct, run.D, run.dtype
    init = run.init
    p0 = (init["weights"], init["means"], init["precisions_cholesky"])
    if run.cuda:
        torch = run.torch
        p0 = tuple(torch.from_numpy(a).to("cuda") for a in p0)

    def e_step(w, mu, P):
        return ops.gmm_log_resp(X, w, mu, P, ct, return_log_resp=True, check_finite=False)

    def update(nk, sums, scatter):
        w, mu, P = _chol_update(_host64(nk), _host64(sums), _host64(scatter), ct, D, dtype)
        if run.cuda:
            w, mu, P = (run.torch.from_numpy(a).to("cuda") for a in (w, mu, P))
        return w, mu, P

    def m_step(log_resp):
        return update(*ops.gmm_suff_stats(X, log_resp, ct, log=True, check_finite=False))

    def em_step(w, mu, P):
        return ops.gmm_em_step(X, w, mu, P, ct, check_finite=False)

    def loop(iters=run.iters):
        w, mu, P = p0
        lb = None
        for _ in range(iters):
            log_prob, *stats = em_step(w, mu, P)
            lb = log_prob.double().mean() if run.cuda else np.mean(log_prob, dtype=np.float64)
            w, mu, P = update(*stats)
        return (w, mu, P), float(lb)

    try:
        t = _timing(run, loop, lambda: loop(1))
    except NotImplementedError as e:
        raise Skip(f"{e}") from None
    (w, mu, P), lb = t.output
    te = _timing(run, lambda: e_step(*p0), pause=False)
    log_resp0 = te.output[1]
    tm = _timing(run, lambda: m_step(log_resp0), pause=False)
    ts = _timing(run, lambda: ops.gmm_suff_stats(X, log_resp0, ct, log=True, check_finite=False),
                 pause=False)
    tf = _timing(run, lambda: em_step(*p0), pause=False)
    return dict(timing=t, n_iter=run.iters, e_timing=te, m_timing=tm, lower_bound=lb,
                final=(_host64(w), _host64(mu), _host64(P)),
                params={"loop": f"{run.iters} x (gmm_em_step + numpy float64 update)",
                        "check_finite": False},
                extra={"suff_stats_seconds": ts.as_dict(), "em_step_seconds": tf.as_dict()},
                notes=["raw kernels, no estimator overhead; the loop runs the fused gmm_em_step "
                       "(E-step and M-step statistics in one pass, no (N, K) matrix); E and M are "
                       "timed as the separate ops: E = gmm_log_resp(return_log_resp=True); "
                       "M = gmm_suff_stats(log=True) + the float64 numpy covariance/precision-"
                       "Cholesky update (gmm_suff_stats alone: extra.suff_stats_seconds; the "
                       "fused step alone: extra.em_step_seconds)"])


def peer_sklearn(run: Run, mods):
    if run.cuda:
        raise Skip("scikit-learn runs on the CPU only (use --device cpu)")
    mixture = mods.get("sklearn.mixture")
    if mixture is None:
        raise Skip(mods["_why"]["sklearn.mixture"])
    init = run.init
    params = dict(n_components=run.K, covariance_type=run.ct, weights_init=init["weights"],
                  means_init=init["means"], precisions_init=init["precisions"],
                  max_iter=run.iters, tol=0.0, reg_covar=REG_COVAR)

    @_quiet
    def fit(max_iter=run.iters):
        return mixture.GaussianMixture(**{**params, "max_iter": max_iter}).fit(run.X)

    t = _timing(run, fit, lambda: fit(1))
    gm = t.output
    out = dict(timing=t, n_iter=int(gm.n_iter_), lower_bound=float(gm.lower_bound_),
               final=(_host64(gm.weights_), _host64(gm.means_), _host64(gm.precisions_cholesky_)),
               params={"class": "sklearn.mixture.GaussianMixture",
                       **{k: v for k, v in params.items() if not k.endswith("_init")},
                       "init": "weights_init, means_init, precisions_init (arrays)"},
               notes=["timed: GaussianMixture(...).fit(X) / n_iter_ (includes validation, "
                      "initialisation from the given arrays and the final E-step for the labels)"])
    # E- and M-step alone, through scikit-learn's private methods, from the initial parameters
    # set directly on an unfitted estimator (fit with max_iter=0 fails in scikit-learn 1.9
    # when precisions_init is given: covariances_ is never set).
    try:
        g0 = mixture.GaussianMixture(**params)
        if not (hasattr(g0, "_estimate_log_prob_resp") and hasattr(g0, "_m_step")):
            raise AttributeError("this scikit-learn has no _estimate_log_prob_resp/_m_step")
        g0.weights_, g0.means_ = init["weights"].copy(), init["means"].copy()
        g0.precisions_cholesky_ = init["precisions_cholesky"].copy()
        te = _timing(run, lambda: g0._estimate_log_prob_resp(run.X), pause=False)
        log_resp0 = te.output[1]
        tm = _timing(run, lambda: g0._m_step(run.X, log_resp0), pause=False)
        out.update(e_timing=te, m_timing=tm)
        out["notes"].append("E = gm._estimate_log_prob_resp(X), M = gm._m_step(X, log_resp) "
                            "(private methods), from the initial weights_, means_, "
                            "precisions_cholesky_ set on the estimator")
    except Exception as e:  # private API: a change there is a note, not a failure
        out["notes"].append(f"E/M split skipped: {type(e).__name__}: {e}")
    return out


# ----- torch EM: scikit-learn's formulas, written once in torch
def make_torch_em(ct: str, D: int):
    """(e_step, m_step) for one covariance type, in plain torch (eager or for torch.compile).

    e_step(X, weights, means, P) -> (log p(x_n) [N], log-responsibilities [N, K]):
      log N(x | mu_k, .) = -1/2 (D log 2 pi + ||(x - mu_k)^T P_k||^2) + log det P_k,
      full: one (N,D)x(D,D) product per component; tied: x^T P once, then per component;
      diag/spherical: the expanded quadratic form as GEMMs (as scikit-learn does).
    m_step(X, log_resp) -> (weights, means, P): scikit-learn's _estimate_gaussian_parameters
      (nk + 10 eps, centred full covariances, tied X^T X - nk mu^T mu, diag E[x^2] - mu^2),
      + reg_covar, then P = L^-T from torch.linalg.cholesky and solve_triangular.
    """
    import torch

    log2pi = D * math.log(2 * math.pi)

    def e_step(X, w, mu, P):
        K = mu.shape[0]
        if ct == "full":
            maha = torch.stack([((X - mu[k]) @ P[k]).square().sum(1) for k in range(K)], dim=1)
            logdet = torch.log(torch.diagonal(P, dim1=-2, dim2=-1)).sum(-1)
        elif ct == "tied":
            Y, M = X @ P, mu @ P
            maha = torch.stack([(Y - M[k]).square().sum(1) for k in range(K)], dim=1)
            logdet = torch.log(torch.diagonal(P)).sum()
        elif ct == "diag":
            prec = P * P
            maha = (mu * mu * prec).sum(1) - 2.0 * (X @ (mu * prec).T) + (X * X) @ prec.T
            logdet = torch.log(P).sum(1)
        else:
            prec = P * P
            maha = ((mu * mu).sum(1) * prec - 2.0 * (X @ mu.T) * prec
                    + (X * X).sum(1, keepdim=True) * prec)
            logdet = D * torch.log(P)
        wlp = -0.5 * (log2pi + maha) + logdet + torch.log(w)
        log_prob = torch.logsumexp(wlp, dim=1)
        return log_prob, wlp - log_prob[:, None]

    def m_step(X, log_resp):
        resp = log_resp.exp()
        K = resp.shape[1]
        nk = resp.sum(0) + NK_EPS
        mu = (resp.T @ X) / nk[:, None]
        eye = torch.eye(D, dtype=X.dtype, device=X.device)
        if ct == "full":
            cov = torch.stack([((resp[:, k:k + 1] * (X - mu[k])).T @ (X - mu[k])) / nk[k]
                               for k in range(K)]) + REG_COVAR * eye
        elif ct == "tied":
            cov = (X.T @ X - (nk[:, None] * mu).T @ mu) / nk.sum() + REG_COVAR * eye
        else:
            var = (resp.T @ (X * X)) / nk[:, None] - mu * mu + REG_COVAR
            cov = var if ct == "diag" else var.mean(1)
        if ct in ("full", "tied"):
            L = torch.linalg.cholesky(cov)
            eyes = eye.expand_as(L)
            P = torch.linalg.solve_triangular(L, eyes, upper=False).mT  # cov^-1 = P P^T
        else:
            P = torch.rsqrt(cov)
        return nk / nk.sum(), mu, P

    return e_step, m_step


def _torch_peer(run: Run, mods, compiled: bool):
    torch = mods.get("torch")
    if torch is None:
        raise Skip(mods["_why"]["torch"])
    dev = "cuda" if run.cuda else "cpu"
    X = run.X_dev() if run.cuda else torch.from_numpy(run.X)
    init = run.init
    p0 = tuple(torch.from_numpy(init[k]).to(dev)
               for k in ("weights", "means", "precisions_cholesky"))
    e_step, m_step = make_torch_em(run.ct, run.D)
    if compiled:
        torch._dynamo.reset()  # fresh caches: no recompile limit carried over from other runs
        e_step = torch.compile(e_step, dynamic=False)
        m_step = torch.compile(m_step, dynamic=False)

    def loop(iters=run.iters):
        w, mu, P = p0
        lb = None
        for _ in range(iters):
            log_prob, log_resp = e_step(X, w, mu, P)
            lb = log_prob.double().mean()
            w, mu, P = m_step(X, log_resp)
        return (w, mu, P), lb

    compile_s = None
    if compiled:  # compile once, outside the timing; a failure is a skip with the reason
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loop(1)
                run.sync()
        except Exception as e:
            msg = str(e).strip().splitlines()
            raise Skip(f"torch.compile failed on this build: {type(e).__name__}: "
                       f"{msg[0][:300] if msg else ''}") from None
        compile_s = time.perf_counter() - t0

    t = _timing(run, loop, lambda: loop(1))
    (w, mu, P), lb = t.output
    te = _timing(run, lambda: e_step(X, *p0), pause=False)
    log_resp0 = te.output[1]
    tm = _timing(run, lambda: m_step(X, log_resp0), pause=False)
    notes = ["scikit-learn's E/M formulas in torch (make_torch_em); E = e_step (log-probs, "
             "logsumexp), M = m_step (weighted means/covariances, cholesky, solve_triangular)"]
    if compiled:
        notes.append(f"torch.compile(e_step / m_step, dynamic=False); the first call "
                     f"(compilation) took {compile_s:.1f} s, excluded")
    return dict(timing=t, n_iter=run.iters, e_timing=te, m_timing=tm, lower_bound=float(lb),
                final=(_host64(w), _host64(mu), _host64(P)),
                params={"function": "make_torch_em", "compiled": compiled, "device": dev,
                        "torch_threads": torch.get_num_threads()},
                extra={"compile_seconds": compile_s} if compiled else {},
                notes=notes)


def peer_torch(run, mods):
    return _torch_peer(run, mods, compiled=False)


def peer_torch_compile(run, mods):
    return _torch_peer(run, mods, compiled=True)


PEER_FUNCS = {"genfast": peer_genfast, "genfast ops": peer_genfast_ops, "sklearn": peer_sklearn,
              "torch": peer_torch, "torch.compile": peer_torch_compile}


# --------------------------------------------------------------------------- matmul rate
def matmul_rates(dtypes, square: int, repeats: int, device: str, torch, seed: int) -> dict:
    """GFLOP/s of a square S x S x S GEMM per dtype (best of the repeats): numpy.matmul on the
    CPU, torch.mm with TF32 disabled on CUDA."""
    out = {}
    for dtype in dtypes:
        if device == "cuda":
            lib = f"torch.mm (CUDA, {dtype}, allow_tf32={torch.backends.cuda.matmul.allow_tf32})"
            g = torch.Generator(device="cuda").manual_seed(seed)
            tdt = getattr(torch, dtype)
            P = torch.randn((square, square), generator=g, device="cuda", dtype=tdt)
            Q = torch.randn((square, square), generator=g, device="cuda", dtype=tdt)
            R = torch.empty_like(P)
            fn, sync = (lambda: torch.mm(P, Q, out=R)), torch.cuda.synchronize
        else:
            lib = f"numpy.matmul ({dtype}, {H.blas_name()})"
            rng = np.random.default_rng(seed)
            P = rng.standard_normal((square, square)).astype(dtype)
            Q = rng.standard_normal((square, square)).astype(dtype)
            R = np.empty_like(P)
            fn, sync = (lambda: np.matmul(P, Q, out=R)), None
        time.sleep(0.2)
        t = H.time_call(fn, repeats=repeats, warmup=1, sync=sync)
        flops = 2.0 * square ** 3
        out[dtype] = {"library": lib, "shape": f"{square}^3", "flops": flops, "seconds": t.as_dict(),
                      "gflops_best": flops / t.min / 1e9, "gflops_median": flops / t.median / 1e9}
        del P, Q, R, fn
    return out


# --------------------------------------------------------------------------- driver
def import_peers(peers, device) -> dict:
    wanted = {"genfast"}
    if "sklearn" in peers:
        wanted.add("sklearn.mixture")
    if device == "cuda" or any(p.startswith("torch") for p in peers):
        wanted.add("torch")
    return H.import_modules(wanted)


def set_threads(mods, threads: int) -> dict:
    how = {"numpy BLAS, genfast/scikit-learn OpenMP": f"threadpoolctl.threadpool_limits({threads})"}
    if mods.get("torch") is not None:
        mods["torch"].set_num_threads(threads)
        how["torch"] = f"torch.set_num_threads({threads})"
    return how


def _x(v):
    return f"{v:.1f}x" if v >= 10 else f"{v:.2f}x"


def _ms(v):
    return f"{1e3 * v:.2f}" if v < 0.1 else f"{1e3 * v:.0f}"


COLUMNS = [
    H.Column("peer", "peer", align="<"),
    H.Column("ms/iter", "s_per_iter", _ms),
    H.Column("min", "s_per_iter_min", _ms),
    H.Column("E ms", "e_seconds", _ms),
    H.Column("M ms", "m_seconds", _ms),
    H.Column("E/floor", "e_over_floor", _x),
    H.Column("vs sklearn", "speedup_vs_sklearn", _x),
    H.Column("vs torch", "speedup_vs_torch", _x),
    H.Column("iters", "n_iter", "{}"),
    H.Column("lower bound", "lower_bound", "{:.6f}"),
    H.Column("final loglik", "final_loglik", "{:.6f}"),
    H.Column("vs sklearn", "loglik_rel_diff_vs_sklearn", "{:+.1e}"),
    H.Column("note", "note", align="<"),
]

SUMMARY_COLUMNS = [
    H.Column("cov", "cov", align="<"),
    H.Column("dtype", "dtype", align="<"),
    H.Column("genfast ms", "genfast", _ms),
    H.Column("ops ms", "ops", _ms),
    H.Column("sklearn ms", "sklearn", _ms),
    H.Column("torch ms", "torch", _ms),
    H.Column("compile ms", "compile", _ms),
    H.Column("floor ms", "floor", _ms),
    H.Column("ops E/floor", "ops_e_floor", _x),
    H.Column("genfast vs sklearn", "speedup", _x),
    H.Column("target", "target", "{:.0f}x"),
    H.Column("met", "met", align="<"),
]


def run_combo(run: Run, peers, mods, rate: dict | None) -> dict:
    N, D, K, ct, dtype = run.N, run.D, run.K, run.ct, run.dtype
    flops = flops_e_step(ct, N, D, K)
    floor_s = flops / (rate["gflops_best"] * 1e9) if rate else None
    print(f"\n-- {ct}, {dtype}: E-step floor {FLOP_RULES[ct]} = {flops / 1e6:.1f} MFLOP"
          + (f" -> {1e3 * floor_s:.2f} ms at {rate['gflops_best']:.1f} GFLOP/s" if rate else
             " (no matmul rate measured)"), flush=True)

    raw = {}
    for peer in peers:
        t0 = time.perf_counter()
        try:
            raw[peer] = {"status": "ok", **PEER_FUNCS[peer](run, mods)}
        except Skip as e:
            raw[peer] = {"status": "skipped", "reason": str(e)}
        except Exception as e:
            raw[peer] = {"status": "error", "reason": f"{type(e).__name__}: {e}",
                         "traceback": traceback.format_exc()}
        raw[peer]["wall_seconds"] = time.perf_counter() - t0
        if raw[peer]["status"] != "ok":
            print(f"  {peer}: {raw[peer]['status']}: {raw[peer]['reason']}", flush=True)

    # Score every peer's final parameters the same way (float64 mean log-likelihood).
    for r in raw.values():
        if r["status"] == "ok":
            try:
                r["final_loglik"] = mean_log_likelihood(run.case.X64, *r["final"], ct)
            except Exception as e:  # e.g. a NaN parameter: shown, not fatal
                r["final_loglik"] = None
                r.setdefault("notes", []).append(f"final parameters not scorable: {type(e).__name__}: {e}")

    def per_iter(name):
        r = raw.get(name)
        if r is None or r["status"] != "ok":
            return None
        return r["timing"].median / max(1, r["n_iter"])

    sk_iter, torch_iter = per_iter("sklearn"), per_iter("torch")
    sk_ll = raw.get("sklearn", {}).get("final_loglik")
    rows, results = [], []
    for peer in peers:
        r = raw[peer]
        row = {"peer": peer}
        res = {"peer": peer, "status": r["status"], "wall_seconds": r["wall_seconds"]}
        if r["status"] != "ok":
            row["note"] = f"{r['status']}: {r['reason']}"
            res["reason"] = r["reason"]
            if "traceback" in r:
                res["traceback"] = r["traceback"]
            rows.append(row)
            results.append(res)
            continue
        n_iter = max(1, r["n_iter"])
        pi = r["timing"].scaled(1.0 / n_iter)
        te, tm = r.get("e_timing"), r.get("m_timing")
        row.update(s_per_iter=pi["median"], s_per_iter_min=pi["min"], n_iter=r["n_iter"],
                   lower_bound=r["lower_bound"], final_loglik=r["final_loglik"],
                   e_seconds=te.median if te else None, m_seconds=tm.median if tm else None)
        if te and floor_s:
            row["e_over_floor"] = te.median / floor_s
        if sk_iter:
            row["speedup_vs_sklearn"] = sk_iter / pi["median"]
        if torch_iter:
            row["speedup_vs_torch"] = torch_iter / pi["median"]
        if sk_ll is not None and r["final_loglik"] is not None:
            row["loglik_rel_diff_vs_sklearn"] = (r["final_loglik"] - sk_ll) / abs(sk_ll)
        short = []
        notes = list(r.get("notes", []))
        if r["n_iter"] != run.iters:
            short.append(f"stopped after {r['n_iter']} iterations")
            notes.insert(0, short[-1] + f"; time divided by {r['n_iter']}")
        if peer == "torch.compile":
            short.append(f"compile {r['extra']['compile_seconds']:.1f}s excluded")
        if peer == "sklearn" and te is None:
            short.append("E/M split skipped (see JSON)")
        row["note"] = "; ".join(short)
        res.update({
            "seconds_per_iter": pi,
            "seconds_per_fit": r["timing"].as_dict(),
            "n_iter": r["n_iter"],
            "e_step_seconds": te.as_dict() if te else None,
            "m_step_seconds": tm.as_dict() if tm else None,
            "e_step_over_floor": row.get("e_over_floor"),
            "speedup_vs_sklearn": row.get("speedup_vs_sklearn"),
            "speedup_vs_torch": row.get("speedup_vs_torch"),
            "lower_bound": r["lower_bound"],
            "final_mean_log_likelihood": r["final_loglik"],
            "loglik_rel_diff_vs_sklearn": row.get("loglik_rel_diff_vs_sklearn"),
            "params": r.get("params", {}),
            "notes": notes,
            **({"extra": r["extra"]} if r.get("extra") else {}),
        })
        rows.append(row)
        results.append(res)
    print(H.format_table(COLUMNS, rows), flush=True)

    summary = {"cov": ct, "dtype": dtype, "floor": floor_s, "target": TARGET_VS_SKLEARN[ct]}
    for key, peer in (("genfast", "genfast"), ("ops", "genfast ops"), ("sklearn", "sklearn"),
                      ("torch", "torch"), ("compile", "torch.compile")):
        summary[key] = per_iter(peer)
    ops_row = next((rw for rw in rows if rw["peer"] == "genfast ops"), {})
    summary["ops_e_floor"] = ops_row.get("e_over_floor")
    best = summary["genfast"] if summary["genfast"] is not None else summary["ops"]
    if best and sk_iter:
        summary["speedup"] = sk_iter / best
        summary["met"] = ("yes" if summary["speedup"] >= summary["target"] else "no") + (
            "" if summary["genfast"] is not None else " (ops)")
    return {
        "covariance_type": ct, "dtype": dtype,
        "floor": {"flops": flops, "rule": FLOP_RULES[ct], "gflops": rate["gflops_best"] if rate else None,
                  "seconds": floor_s},
        "target_speedup_vs_sklearn": TARGET_VS_SKLEARN[ct],
        "summary": summary,
        "results": results,
    }


def run_case(case: Case, peers, mods, args, rates) -> dict:
    N, D, K = case.N, case.D, case.K
    print(f"\n== Gaussian mixture N={N:,} D={D} K={K}, {args.iters} EM iterations from the same "
          f"initial parameters (reg_covar={REG_COVAR:g}, tol=0), {args.threads} threads, "
          f"{args.device}, median of {args.repeats} repeat(s) ==", flush=True)
    combos = []
    for ct in args.covariance_types:
        for dtype in args.dtypes:
            run = Run(case, ct, dtype, args, torch=mods.get("torch"))
            combos.append(run_combo(run, peers, mods, rates.get(dtype)))
            run.release()
            del run
    print(f"\n== summary N={N:,} D={D} K={K}: ms per EM iteration; genfast vs sklearn uses the "
          "genfast estimator (the ops loop when it did not run); target from issue 3 ==")
    print(H.format_table(SUMMARY_COLUMNS, [c["summary"] for c in combos]), flush=True)
    return {
        "N": N, "D": D, "K": K, "iterations": args.iters, "repeats": args.repeats,
        "reg_covar": REG_COVAR, "tol": 0.0,
        "data": {**case.data_info, "seed": args.seed,
                 "float32": "the float64 samples rounded to float32 (same points)"},
        "init": case.init_info,
        "runs": combos,
    }


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.square is None:
        args.square = QUICK_SQUARE if args.quick else SQUARE
    if args.repeats < 1 or args.iters < 1 or args.square < 0:
        print("--repeats and --iters must be >= 1, --square >= 0", file=sys.stderr)
        return 2
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    peers = args.peers
    peer_run = H.PeerRun(NAME, "genfast Gaussian-mixture benchmark", args, import_peers, set_threads)
    if (status := peer_run.start()) is not None:
        return status
    with peer_run:
        record, mods = peer_run.record, peer_run.mods
        record["settings"] = {
            "quick": args.quick, "sizes": [list(s) for s in sizes], "peers": peers,
            "covariance_types": args.covariance_types, "dtypes": args.dtypes,
            "repeats": args.repeats, "warmup": "one untimed 1-iteration fit per peer and run; "
            "one untimed call before each E-/M-step timing",
            "iterations": args.iters, "reg_covar": REG_COVAR, "tol": 0.0, "seed": args.seed,
            "square_gemm": args.square,
            "statistic": "median over repeats of (fit seconds / n_iter); E/M: median over repeats",
            "timer": peer_run.timer(),
            "flop_rules": FLOP_RULES,
            "target_speedup_vs_sklearn": TARGET_VS_SKLEARN,
        }
        record["fairness"].update({
            "same_initial_parameters_for_every_peer": "weights, means, precisions (estimators) / "
                "their precision Cholesky factors (loops), cast to the run's dtype",
            "final_loglik": "every peer's final parameters scored the same way: float64 mean "
                            "log-likelihood of the float64 data (numpy, in the script)",
            "lower_bound": "each peer's own mean log-likelihood at its last E-step (before the last "
                           "M-step), as scikit-learn's lower_bound_",
        })
        rates = {}
        if args.square > 0:
            rates = matmul_rates(args.dtypes, args.square, max(2, args.repeats), args.device,
                                 mods.get("torch"), args.seed)
            print("matmul rate: " + "; ".join(f"{r['library']} {r['shape']}: {r['gflops_best']:.1f} GFLOP/s"
                                               for r in rates.values()), flush=True)
        record["matmul"] = rates
        record["cases"] = []
        for N, D, K in sizes:
            case = Case(N, D, K, args)
            record["cases"].append(run_case(case, args.peers, mods, args, rates))
            del case

    n_err = sum(r["status"] == "error" for c in record["cases"] for run in c["runs"]
                for r in run["results"])
    return H.finish(NAME, args.device, record, n_err, out_dir=args.out, no_json=args.no_json)


if __name__ == "__main__":
    sys.exit(main())
