"""genfast.VAE: a variational autoencoder (MLP encoder and decoder) trained on the fused ELBO
ops of genfast.torch."""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from torch import Tensor, nn

from . import ops
from . import torch as fused


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _mlp(widths, activation):
    """Linear layers through `widths`, the activation between them (none after the last)."""
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class _ProgressBar:
    """One line on stderr per epoch, redrawn at most every 0.1 s: epoch, batches, mean loss."""

    def __init__(self, epochs: int, batches: int, enabled: bool, stream=None):
        self.epochs, self.batches, self.enabled = epochs, batches, enabled
        self.stream = stream or sys.stderr
        self.last = 0.0

    def update(self, epoch: int, batch: int, loss: float, start: float) -> None:
        now = time.perf_counter()
        done = batch == self.batches
        if not self.enabled or (not done and now - self.last < 0.1):
            return
        self.last = now
        filled = 30 * batch // self.batches
        self.stream.write(f"\repoch {epoch + 1}/{self.epochs} [{'#' * filled}{'.' * (30 - filled)}] "
                          f"{batch}/{self.batches} loss {loss:.4g} ({now - start:.1f} s)" + ("\n" if done else ""))
        self.stream.flush()


class VAE(nn.Module):
    """Variational autoencoder with Gaussian posterior q(z | x) = N(mu(x), diag(exp(logvar(x)))),
    standard normal prior p(z) = N(0, I), and a Bernoulli or Gaussian decoder p(x | z), whose
    loss is the negative ELBO computed by genfast.torch's fused kernels.

    Parameters
    ----------
    n_features : data dimension D (inputs of shape (B, *features) are flattened to (B, D))
    latent_dim : L
    hidden : widths of the encoder's hidden layers; the decoder mirrors them
    likelihood : 'bernoulli' (data in [0, 1], the decoder gives logits) or 'gaussian' (the
        decoder gives means and per-element log-variances, or means only with `variance`)
    variance : fixed variance of the Gaussian decoder (no log-variance output)
    beta : weight of the KL term in loss() (beta-VAE)
    activation : module class between linear layers
    device, dtype : where the parameters live (default CPU, float32)
    random_state : seed of the initial weights (the global torch RNG is left alone)

    The pieces a likelihood estimator needs: ``encode(x) -> (mu, logvar)``, ``decode(z) ->
    (decoder_out, decoder_logvar or None)``, ``log_likelihood(x, decoder_out, decoder_logvar)``
    (log p(x | z) per sample), ``sample_prior(n)``, ``latent_dim``.
    """

    def __init__(self, n_features: int, latent_dim: int, hidden=(256, 128), likelihood: str = "bernoulli",
                 *, variance: float | None = None, beta: float = 1.0, activation=nn.ReLU, device=None,
                 dtype=torch.float32, random_state: int | None = None):
        super().__init__()
        self.n_features = _positive_int("n_features", n_features)
        self.latent_dim = _positive_int("latent_dim", latent_dim)
        self.hidden = tuple(_positive_int("hidden width", h) for h in hidden)
        ops.gaussian_fixed_logvar(likelihood, None, variance)  # checks likelihood and variance
        self.likelihood, self.variance, self.beta = likelihood, variance, ops.check_beta(beta)
        self.predicts_logvar = likelihood == "gaussian" and variance is None
        out_width = self.n_features * (2 if self.predicts_logvar else 1)
        with torch.random.fork_rng(devices=[]):
            if random_state is not None:
                torch.manual_seed(random_state)
            self.encoder = _mlp((self.n_features, *self.hidden, 2 * self.latent_dim), activation)
            self.decoder = _mlp((self.latent_dim, *self.hidden[::-1], out_width), activation)
        self.to(device=device, dtype=dtype)
        self.history_: list[float] = []

    # ------------------------------------------------------------------ model pieces
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _as_input(self, X) -> Tensor:
        """X (numpy or torch, (B, *features)) as a (B, D) tensor on the model's device and dtype."""
        X = torch.as_tensor(X)
        if X.ndim < 2:
            raise ValueError(f"X must have shape (B, *features), got {tuple(X.shape)}")
        X = X.to(device=self.device, dtype=self.dtype).reshape(X.shape[0], -1)
        if X.shape[1] != self.n_features:
            raise ValueError(f"X has {X.shape[1]} features per sample but the model has n_features={self.n_features}")
        return X

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, logvar), each (B, L): the posterior q(z | x)."""
        mu, logvar = self.encoder(self._as_input(x)).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        """(decoder_out, decoder_logvar), each (B, D): p(x | z) as Bernoulli logits, or Gaussian
        means with per-element log-variances (None with a fixed variance)."""
        out = self.decoder(z)
        if self.predicts_logvar:
            mean, logvar = out.chunk(2, dim=1)
            return mean, logvar
        return out, None

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws of z from the prior N(0, I), shape (n, L)."""
        return torch.randn(n, self.latent_dim, generator=generator, device=self.device, dtype=self.dtype)

    def reparameterize(self, mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """z = mu + exp(logvar / 2) eps with eps ~ N(0, I): a draw of q(z | x) that gradients flow through."""
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps

    def log_likelihood(self, x: Tensor, decoder_out: Tensor, decoder_logvar: Tensor | None = None) -> Tensor:
        """log p(x | z) per sample, shape (B,), from decode(z)'s parameters."""
        x = self._as_input(x)
        if self.likelihood == "bernoulli":
            return fused.bernoulli_log_likelihood(x, decoder_out, reduction="none")
        return fused.gaussian_log_likelihood(x, decoder_out, decoder_logvar, variance=self.variance,
                                             reduction="none")

    def _elbo(self, x: Tensor, reduction: str, beta: float, generator=None) -> Tensor:
        """The ELBO of x with one reparameterised draw of z."""
        x = self._as_input(x)
        mu, logvar = self.encode(x)
        out, out_logvar = self.decode(self.reparameterize(mu, logvar, generator))
        return fused.elbo(x, out, mu, logvar, self.likelihood, beta, reduction, decoder_logvar=out_logvar,
                          variance=self.variance)

    def forward(self, x: Tensor) -> Tensor:
        """Per-sample ELBO of x (shape (B,)), one draw of z each, beta = 1."""
        return self._elbo(x, "none", 1.0)

    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The training loss: minus the batch mean of the ELBO (with the model's beta)."""
        return -self._elbo(x, "mean", self.beta, generator)

    # ------------------------------------------------------------------ using the model
    @torch.no_grad()
    def elbo(self, X, batch_size: int = 1024, generator: torch.Generator | None = None) -> float:
        """Mean ELBO per sample of the data X (numpy or torch), one draw of z per sample, beta = 1:
        a lower bound on the mean log-likelihood, comparable across models."""
        X = torch.as_tensor(X)
        total = sum(float(self._elbo(X[i:i + batch_size], "sum", 1.0, generator))
                    for i in range(0, len(X), batch_size))
        return total / len(X)

    @torch.no_grad()
    def sample(self, n: int, *, mean: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """n samples of the model, shape (n, D): z from the prior, then the mean of p(x | z)
        (Bernoulli probabilities or Gaussian means), or a draw from it with mean=False."""
        out, out_logvar = self.decode(self.sample_prior(n, generator))
        return self._emit(out, out_logvar, mean, generator)

    @torch.no_grad()
    def reconstruct(self, X, *, mean: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """Reconstructions of X, shape (B, D): decoded from the posterior mean, as in sample()."""
        mu, _ = self.encode(X)
        out, out_logvar = self.decode(mu)
        return self._emit(out, out_logvar, mean, generator)

    def _emit(self, out, out_logvar, mean, generator):
        """The mean of p(x | z), or one draw of it."""
        if self.likelihood == "bernoulli":
            p = torch.sigmoid(out)
            return p if mean else torch.bernoulli(p, generator=generator)
        if mean:
            return out
        std = torch.exp(0.5 * out_logvar) if out_logvar is not None else self.variance ** 0.5
        return out + std * torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)

    def fit(self, X, epochs: int = 10, batch_size: int = 128, lr: float = 1e-3, *, shuffle: bool = True,
            progress: bool = True, random_state: int | None = None) -> "VAE":
        """Train with Adam on the negative ELBO, on the model's device. X: numpy array or torch
        tensor of shape (N, *features), moved to the device a batch at a time. A progress bar
        goes to stderr unless progress=False. The mean training loss of each epoch is appended
        to ``history_``. Returns self."""
        epochs, batch_size = _positive_int("epochs", epochs), _positive_int("batch_size", batch_size)
        X = torch.as_tensor(X)
        if X.ndim < 2 or X.shape[0] < 1:
            raise ValueError(f"X must have shape (N, *features) with N >= 1, got {tuple(X.shape)}")
        if not (X.is_floating_point() or X.dtype in (torch.uint8, torch.int32, torch.int64, torch.bool)):
            raise TypeError(f"X must hold real numbers, got {X.dtype}")
        if self.likelihood == "bernoulli" and (X.min() < 0 or X.max() > 1):
            raise ValueError("the Bernoulli likelihood needs data in [0, 1]; scale X (or use likelihood='gaussian')")
        order_gen = torch.Generator()
        noise_gen = torch.Generator(device=self.device)
        if random_state is not None:
            order_gen.manual_seed(random_state)
            noise_gen.manual_seed(random_state + 1)
        else:
            order_gen.seed()
            noise_gen.seed()
        optimizer = torch.optim.Adam(self.parameters(), lr=lr)
        n = X.shape[0]
        bar = _ProgressBar(epochs, (n + batch_size - 1) // batch_size, progress)
        for epoch in range(epochs):
            start = time.perf_counter()
            order = torch.randperm(n, generator=order_gen) if shuffle else torch.arange(n)
            total = 0.0
            for batch, i in enumerate(range(0, n, batch_size), start=1):
                xb = X[order[i:i + batch_size].to(X.device)]
                loss = self.loss(xb, noise_gen)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * xb.shape[0]
                bar.update(epoch, batch, total / min(n, i + batch_size), start)
            self.history_.append(total / n)
        return self
