"""Exact pooling of Gaussian-mixture M-step statistics computed on separate pieces of rows.

Used wherever the statistics of a data set are summed piece by piece so that no (N, K)
matrix exists at once: genfast.dask's chunks, GaussianMixture's initial responsibilities,
and gmm_em_step's two-op path on backends without a fused kernel (CUDA).
"""

from __future__ import annotations

import numpy as np

#: scikit-learn's guard against empty components, N_k + 10 eps: the kernels centre the scatter
#: on sums / (N_k + NK_EPS), with float64's eps for every input dtype.
NK_EPS = 10 * np.finfo(np.float64).eps


def moved_scatter(nk, sums, scatter, to_means, covariance_type):
    """sum_n r_nk (x_n - m_k)(x_n - m_k)^T about to_means m, from the scatter about the kernel's
    means mu = sums / (nk + d), d = 10 eps, in the covariance type's shape."""
    own_means = sums / (nk + NK_EPS)[:, None]
    delta = own_means - to_means
    # sum_n r (x - mu) = sums - nk mu = d mu, so the scatter about m is
    # scatter + nk delta delta^T + d (mu delta^T + delta mu^T), delta = mu - m (exact, for any nk)
    if covariance_type in ("full", "tied"):
        cross = NK_EPS * own_means[:, :, None] * delta[:, None, :]
        shift = nk[:, None, None] * delta[:, :, None] * delta[:, None, :] + cross + cross.transpose(0, 2, 1)
        return scatter + (shift if covariance_type == "full" else shift.sum(axis=0))
    shift = nk[:, None] * delta * delta + 2 * NK_EPS * own_means * delta
    return scatter + (shift if covariance_type == "diag" else shift.sum(axis=1))


def pooled_statistics(parts, covariance_type):
    """The M-step statistics (N_k, sums, scatter) of a union of pieces of rows, from each
    piece's (float64): N_k and sums add; each scatter moves to the pooled means
    sums / (N_k + d) (Chan et al.'s parallel variance), so the result is centred as the
    kernel's own scatter over all of those points."""
    nk, sums = (sum(values) for values in list(zip(*parts))[:2])
    pooled_means = sums / (nk + NK_EPS)[:, None]
    return nk, sums, sum(moved_scatter(n, s, S, pooled_means, covariance_type) for n, s, S in parts)
