"""Pure-numpy float64 reference implementations: the obvious code, no cleverness.

This module is the oracle the compiled kernels are tested against. It favours clarity over
speed and memory (kmeans_assign forms the full N x K distance matrix): use it on small inputs.
Every function accepts a leading batch dimension where the matching op does.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "kmeans_assign", "kmeans_update", "lloyd_iteration", "inertia", "kmeans_plusplus",
    "COVARIANCE_TYPES", "gmm_log_resp", "gmm_suff_stats", "gmm_em_step", "gaussian_mle",
    "precisions_cholesky_from_covariances",
    "kl_normal_std", "bernoulli_log_likelihood", "gaussian_log_likelihood", "elbo", "elbo_gradients",
]

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


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


# --------------------------------------------------------------------------- Gaussian mixtures
# Parameterised as scikit-learn does, by the Cholesky factor P of each precision matrix
# (precision = P P^T, P upper triangular), with these shapes for K components in D dims:
#   full (K, D, D), tied (D, D), diag (K, D) = 1/sigma, spherical (K,) = 1/sigma.


def _full_precision_cholesky(precisions_cholesky, covariance_type, K, D):
    """The precision Cholesky factor of every component as a (K, D, D) array."""
    P = np.asarray(precisions_cholesky, dtype=np.float64)
    if covariance_type == "full":
        return P
    if covariance_type == "tied":
        return np.broadcast_to(P, (K, D, D))
    if covariance_type == "diag":
        return np.stack([np.diag(p) for p in P])
    if covariance_type == "spherical":
        return np.stack([np.eye(D) * p for p in P])
    raise ValueError(f"unknown covariance_type {covariance_type!r}")


def gmm_log_resp(X, weights, means, precisions_cholesky, covariance_type):
    """(log p(x_n) (N,), log responsibilities (N, K)) of a Gaussian mixture.

    log N(x | mu_k, Sigma_k) = -D/2 log(2 pi) + log det P_k - 1/2 ||(x - mu_k)^T P_k||^2.
    """
    X = np.asarray(X, dtype=np.float64)
    means = np.asarray(means, dtype=np.float64)
    N, D = X.shape
    K = means.shape[0]
    P = _full_precision_cholesky(precisions_cholesky, covariance_type, K, D)
    log_joint = np.empty((N, K))
    for k in range(K):
        y = (X - means[k]) @ P[k]
        log_det = np.sum(np.log(np.diag(P[k])))
        log_joint[:, k] = -0.5 * (D * np.log(2 * np.pi) + (y * y).sum(axis=1)) + log_det
    log_joint += np.log(np.asarray(weights, dtype=np.float64))
    # log-sum-exp over components, shifted by the row maximum; an all -inf row stays -inf.
    m = log_joint.max(axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        log_prob = np.log(np.exp(log_joint - m).sum(axis=1)) + m[:, 0]
    with np.errstate(invalid="ignore"):
        log_resp = log_joint - log_prob[:, None]
    return log_prob, log_resp


def gmm_suff_stats(X, resp, covariance_type):
    """M-step statistics: (N_k (K,), sums sum_n r_nk x_n (K, D), scatter).

    The scatter is taken about the means mu_k = sums_k / (N_k + 10 eps) (scikit-learn's
    guard, which gives an empty component the mean 0 instead of NaN):
      full      (K, D, D)  sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T
      tied      (D, D)     the full scatter summed over components
      diag      (K, D)     the diagonal of the full scatter
      spherical (K,)       its trace, sum_n r_nk ||x_n - mu_k||^2
    """
    X = np.asarray(X, dtype=np.float64)
    resp = np.asarray(resp, dtype=np.float64)
    nk = resp.sum(axis=0)
    sums = resp.T @ X
    means = sums / (nk + 10 * np.finfo(np.float64).eps)[:, None]
    full = np.stack([(resp[:, k, None] * (X - means[k])).T @ (X - means[k]) for k in range(len(nk))])
    scatter = {
        "full": full,
        "tied": full.sum(axis=0),
        "diag": np.stack([np.diag(f) for f in full]),
        "spherical": np.array([np.trace(f) for f in full]),
    }[covariance_type]
    return nk, sums, scatter


def gmm_em_step(X, weights, means, precisions_cholesky, covariance_type):
    """One EM iteration's statistics: (log p(x_n) (N,), then gmm_suff_stats of the
    responsibilities exp(log_resp) of the given parameters)."""
    log_prob, log_resp = gmm_log_resp(X, weights, means, precisions_cholesky, covariance_type)
    return (log_prob, *gmm_suff_stats(X, np.exp(log_resp), covariance_type))


def precisions_cholesky_from_covariances(covariances, covariance_type):
    """Upper-triangular P with P P^T = inverse covariance, in scikit-learn's shapes."""
    C = np.asarray(covariances, dtype=np.float64)
    if covariance_type in ("diag", "spherical"):
        return 1.0 / np.sqrt(C)

    def one(cov):
        L = np.linalg.cholesky(cov)  # cov = L L^T, so inv(cov) = inv(L)^T inv(L) = P P^T
        return np.linalg.inv(L).T

    return one(C) if covariance_type == "tied" else np.stack([one(c) for c in C])


def gaussian_mle(X, covariance_type="full"):
    """Maximum-likelihood mean (D,) and covariance of one Gaussian (no regularisation):
    full/tied (D, D), diag (D,), spherical scalar (the mean of the variances)."""
    X = np.asarray(X, dtype=np.float64)
    mean = X.mean(axis=0)
    cov = (X - mean).T @ (X - mean) / X.shape[0]
    if covariance_type in ("full", "tied"):
        return mean, cov
    if covariance_type == "diag":
        return mean, np.diag(cov).copy()
    if covariance_type == "spherical":
        return mean, float(np.diag(cov).mean())
    raise ValueError(f"unknown covariance_type {covariance_type!r}")


# --------------------------------------------------------------------------- VAE ELBO
# Per sample b: ELBO_b = rec_b - beta kl_b with rec_b = sum_d log p(x_bd | decoder_out_bd) and
# kl_b = KL(N(mu_b, diag(exp(logvar_b))) || N(0, I)). Each term returns its per-sample value
# and its per-element derivatives.


def kl_normal_std(mu, logvar):
    """(kl (B,), d kl/d mu, d kl/d logvar) for 1/2 sum_l (mu^2 + exp(logvar) - logvar - 1).

    exp(logvar) - 1 - logvar is formed as expm1(logvar) - logvar, which keeps its accuracy
    for a posterior close to the prior (logvar near 0).
    """
    mu = np.asarray(mu, dtype=np.float64)
    logvar = np.asarray(logvar, dtype=np.float64)
    kl = 0.5 * (mu**2 + np.expm1(logvar) - logvar).sum(axis=1)
    return kl, mu.copy(), 0.5 * np.expm1(logvar)


def bernoulli_log_likelihood(x, logits):
    """(rec (B,), d rec/d logits, d rec/d x) for rec = sum_d x log p + (1 - x) log(1 - p) with
    p = sigmoid(l) (= sum_d x l - log(1 + exp(l))), and d rec/d l = x (1 - p) - (1 - x) p
    (= x - p). log sigmoid(l) = -log(1 + exp(-l)) and 1 - p = sigmoid(-l) are taken as such,
    accurate for every l."""
    x = np.asarray(x, dtype=np.float64)
    logits = np.asarray(logits, dtype=np.float64)
    log_p, log_1mp = -np.logaddexp(0.0, -logits), -np.logaddexp(0.0, logits)
    rec = (x * log_p + (1.0 - x) * log_1mp).sum(axis=1)
    return rec, x * np.exp(log_1mp) - (1.0 - x) * np.exp(log_p), logits.copy()


def gaussian_log_likelihood(x, mean, logvar):
    """(rec (B,), d rec/d mean, d rec/d logvar, d rec/d x) for sum_d log N(x | mean, exp(logvar))
    = -1/2 sum_d (log 2 pi + logvar + (x - mean)^2 exp(-logvar)); logvar may be a scalar."""
    x = np.asarray(x, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    logvar = np.broadcast_to(np.asarray(logvar, dtype=np.float64), x.shape)
    sq = (x - mean) ** 2 * np.exp(-logvar)
    rec = -0.5 * (np.log(2 * np.pi) + logvar + sq).sum(axis=1)
    d_mean = (x - mean) * np.exp(-logvar)
    return rec, d_mean, 0.5 * (sq - 1.0), -d_mean


def _reconstruction(x, decoder_out, likelihood, decoder_logvar, variance):
    """(rec, {input name: d rec/d input}) of either likelihood."""
    if likelihood == "bernoulli":
        rec, d_out, d_x = bernoulli_log_likelihood(x, decoder_out)
        return rec, {"x": d_x, "decoder_out": d_out}
    per_element = decoder_logvar is not None
    logvar = decoder_logvar if per_element else np.log(1.0 if variance is None else variance)
    rec, d_out, d_logvar, d_x = gaussian_log_likelihood(x, decoder_out, logvar)
    grads = {"x": d_x, "decoder_out": d_out}
    if per_element:
        grads["decoder_logvar"] = d_logvar
    return rec, grads


def elbo(x, decoder_out, mu=None, logvar=None, likelihood="bernoulli", decoder_logvar=None,
         variance=None, beta=1.0):
    """(elbo, rec, kl), each (B,): ELBO_b = rec_b - beta kl_b (kl = 0 without mu, logvar).
    The Gaussian takes a per-element decoder_logvar or one fixed variance (default 1)."""
    rec, _ = _reconstruction(x, decoder_out, likelihood, decoder_logvar, variance)
    kl = np.zeros_like(rec) if mu is None else kl_normal_std(mu, logvar)[0]
    return rec - beta * kl, rec, kl


def elbo_gradients(x, decoder_out, mu=None, logvar=None, likelihood="bernoulli", decoder_logvar=None,
                   variance=None, beta=1.0):
    """{input name: gradient of sum_b ELBO_b} for x, decoder_out, decoder_logvar (when given), mu
    and logvar (when given)."""
    _, grads = _reconstruction(x, decoder_out, likelihood, decoder_logvar, variance)
    if mu is not None:
        _, d_mu, d_logvar = kl_normal_std(mu, logvar)
        grads["mu"], grads["logvar"] = -beta * d_mu, -beta * d_logvar
    return grads


def logmeanexp_stats(a, axis=-1):
    """(log mean exp, ESS, standard error) along axis: log((1/M) sum exp(a)), (sum w)^2 / sum w^2
    and sqrt(var(w) / M) / mean(w) (var with 1/M) for w = exp(a). All -inf: (-inf, 0, inf)."""
    a = np.moveaxis(np.asarray(a, dtype=np.float64), axis, -1)
    M = a.shape[-1]
    top = a.max(axis=-1, keepdims=True)
    finite = np.isfinite(top)
    w = np.exp(a - np.where(finite, top, 0.0))
    mean = w.mean(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_mean = np.log(mean) + np.where(finite[..., 0], top[..., 0], 0.0)
        ess = np.where(mean > 0, w.sum(-1) ** 2 / (w**2).sum(-1), 0.0)
        se = np.where(mean > 0, np.sqrt(w.var(axis=-1) / M) / mean, np.inf)
    return log_mean, ess, se


def log_importance_weights(x, decoder_out, log_prior, log_proposal, likelihood="bernoulli", decoder_logvar=None,
                           variance=None):
    """(B, m) log w = sum_d log p(x_d | decoder_out[:, j]) + log_prior - log_proposal, for x
    (B, D) and decoder outputs (B, m, D), one draw j at a time."""
    decoder_out = np.asarray(decoder_out, dtype=np.float64)
    columns = []
    for j in range(decoder_out.shape[1]):
        logvar_j = None if decoder_logvar is None else np.asarray(decoder_logvar, dtype=np.float64)[:, j]
        columns.append(_reconstruction(x, decoder_out[:, j], likelihood, logvar_j, variance)[0])
    return np.stack(columns, axis=1) + np.asarray(log_prior, np.float64) - np.asarray(log_proposal, np.float64)


def log_likelihood(model, x, eps, proposal="posterior"):
    """The obvious Monte Carlo estimate of log p(x) per row, with all M draws at once in float64
    (genfast.mc.log_likelihood streams them in chunks): z = eps (proposal 'prior') or
    z = mu + exp(logvar / 2) eps with (mu, logvar) = model.encode(x) ('posterior'), for given
    standard normal draws eps (B, M, L); log w = log p(x | z) + log p(z) - log r(z).
    Returns (log_likelihood, std_error, ess), each (B,). The model runs in torch (its own dtype)."""
    import torch

    eps = np.asarray(eps, dtype=np.float64)
    B, M, L = eps.shape
    with torch.no_grad():
        mu_t, logvar_t = model.encode(torch.as_tensor(x))
    mu, logvar = (np.asarray(t.cpu(), dtype=np.float64) for t in (mu_t, logvar_t))

    def log_standard_normal(v):
        return -0.5 * (v**2).sum(-1) - 0.5 * L * np.log(2 * np.pi)

    if proposal == "prior":
        z = eps
        log_prior = log_proposal = log_standard_normal(eps)
    else:
        z = mu[:, None, :] + np.exp(0.5 * logvar)[:, None, :] * eps
        log_prior = log_standard_normal(z)
        # q(z | x) = N(mu, diag(exp(logvar))): the density of eps less the log-scale of z
        log_proposal = log_standard_normal(eps) - 0.5 * logvar.sum(-1)[:, None]
    with torch.no_grad():
        out, out_logvar = model.decode(torch.as_tensor(z.reshape(B * M, L), dtype=mu_t.dtype))
    D = out.shape[-1]
    out = np.asarray(out.cpu(), dtype=np.float64).reshape(B, M, D)
    out_logvar = None if out_logvar is None else np.asarray(out_logvar.cpu(), dtype=np.float64).reshape(B, M, D)
    variance = getattr(model, "variance", None) if model.likelihood == "gaussian" and out_logvar is None else None
    x = np.asarray(torch.as_tensor(x).cpu(), dtype=np.float64).reshape(B, D)
    log_w = log_importance_weights(x, out, log_prior, log_proposal, model.likelihood, out_logvar, variance)
    log_mean, ess, std_error = logmeanexp_stats(log_w)
    return log_mean, std_error, ess
