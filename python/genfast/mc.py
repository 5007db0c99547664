"""genfast.mc: Monte Carlo estimates of log p(x) for latent-variable models, with error bars.

    log p(x) = log E_{z ~ r}[p(x | z) p(z) / r(z)] ~ log((1/M) sum_i w_i),  w_i = p(x | z_i) p(z_i) / r(z_i)

with the proposal r either the prior p(z) (naive Monte Carlo: unbiased in p(x), hopeless in high
dimensions) or the encoder's q(z | x) (importance sampling; the IWAE bound). Samples are drawn
in chunks and folded into a streaming log-mean-exp, so n_samples is not limited by memory.

The model protocol (genfast.VAE follows it; any object with these members works):

- ``latent_dim``: L; the prior is p(z) = N(0, I_L)
- ``encode(x) -> (mu, logvar)``, each (B, L): q(z | x) = N(mu, diag(exp(logvar)))
- ``decode(z) -> (decoder_out, decoder_logvar or None)``, each (n, D): p(x | z)
- ``likelihood``: 'bernoulli' (decoder_out are logits) or 'gaussian' (means, with the per-element
  decoder_logvar, or the fixed variance ``variance`` when decoder_logvar is None)
- ``variance`` (Gaussian with a fixed variance only): that variance
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import ops

PROPOSALS = ("prior", "posterior")


class LogLikelihoodEstimate(NamedTuple):
    """Per data point estimates, each (B,)."""

    log_likelihood: object  #: log((1/M) sum_i w_i): the estimate of log p(x)
    std_error: object  #: delta-method standard error of log_likelihood, sqrt(1/ESS - 1/M)
    ess: object  #: effective sample size (sum w)^2 / sum w^2, in [1, M]


class LogMeanExp:
    """Streaming log-mean-exp over rows: ``update(chunk)`` with (B, m) log-weights (any m per
    call; numpy arrays or torch tensors, CPU or CUDA), then ``result()`` -> LogLikelihoodEstimate
    of log((1/M) sum exp(a)) per row, its standard error and ESS, with M the total columns
    added. The state is (B,) float64 per row (running max, shifted sum and sum of squares), on
    the first chunk's device; every later chunk must be on that device too (numpy arrays and CPU
    tensors mix), and the results take the first chunk's placement and dtype."""

    def __init__(self):
        self._state = None

    def update(self, chunk) -> "LogMeanExp":
        rows = ops._rows_2d("chunk", chunk)
        if self._state is None:
            self._state = ops._LogMeanExpState(rows.shape[0])
        self._state.update(rows, "chunk")
        return self

    @property
    def n_samples(self) -> int:
        return 0 if self._state is None else self._state.n_samples

    def result(self) -> LogLikelihoodEstimate:
        if self._state is None:
            raise ValueError("no chunk was added: call update() first")
        log_mean, ess, std_error = self._state.result()
        return LogLikelihoodEstimate(log_mean, std_error, ess)


def _log_standard_normal(eps):
    """sum_l log N(eps_l | 0, 1) over the last axis."""
    return -0.5 * (eps * eps).sum(-1) - 0.5 * eps.shape[-1] * math.log(2 * math.pi)


def log_likelihood(model, x, n_samples: int, proposal: str = "posterior", chunk_size: int = 128,
                   generator=None) -> LogLikelihoodEstimate:
    """Monte Carlo estimate of log p(x) per data point, with standard errors and ESS.

    model : genfast.VAE or any object with the protocol in this module's docstring
    x : (B, D) data (numpy or torch; moved to the device and dtype of the model's encoder output)
    n_samples : M latent draws per data point
    proposal : 'prior' (z ~ N(0, I): naive Monte Carlo) or 'posterior' (z ~ q(z | x):
        importance sampling, the IWAE estimate)
    chunk_size : draws decoded at a time per data point (memory: B chunk_size D decoder outputs)
    generator : torch.Generator for the draws, on the model's device (torch.Generator("cuda")
        for a model on CUDA)

    log p(x) is estimated by log((1/M) sum_i w_i); its expectation is at most log p(x) (Jensen),
    and the gap shrinks as M grows. Returns a LogLikelihoodEstimate of (B,) tensors on the model's
    device (CPU or CUDA: the fused weights and the streaming log-mean-exp run there).
    """
    import torch

    if proposal not in PROPOSALS:
        raise ValueError(f"proposal must be one of {PROPOSALS}, got {proposal!r}")
    for name, value in (("n_samples", n_samples), ("chunk_size", chunk_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    likelihood = model.likelihood
    variance = getattr(model, "variance", None)
    L = model.latent_dim
    with torch.no_grad():
        mu, logvar = model.encode(x)
        x = torch.as_tensor(x).to(device=mu.device, dtype=mu.dtype).reshape(mu.shape[0], -1)
        B = x.shape[0]
        std = torch.exp(0.5 * logvar)
        acc = LogMeanExp()
        for start in range(0, n_samples, chunk_size):
            m = min(chunk_size, n_samples - start)
            eps = torch.randn((B, m, L), generator=generator, dtype=mu.dtype, device=mu.device)
            if proposal == "prior":
                z = eps
                log_prior = log_proposal = _log_standard_normal(eps)
            else:
                # z = mu + std eps ~ q(z | x); log q(z | x) = log N(eps | 0, I) - sum_l logvar_l / 2
                z = mu[:, None, :] + std[:, None, :] * eps
                log_proposal = _log_standard_normal(eps) - 0.5 * logvar.sum(-1, keepdim=True)
                log_prior = _log_standard_normal(z)
            out, out_logvar = model.decode(z.reshape(B * m, L))
            D = out.shape[-1]
            log_w = ops.log_importance_weights(
                x, out.reshape(B, m, D), log_prior.contiguous(), log_proposal.contiguous(), likelihood=likelihood,
                decoder_logvar=None if out_logvar is None else out_logvar.reshape(B, m, D),
                variance=variance if likelihood == "gaussian" and out_logvar is None else None,
                check_finite=False)
            acc.update(log_w)
        return acc.result()
