"""``genfast demo``: from one Gaussian to a VAE on scikit-learn's bundled digits (no download).

Each step fits a model on 1,500 of the 1,797 8x8 digits (intensities scaled to [0, 1]),
scores it on the held-out rest, and times genfast against the numpy oracle
(``genfast.reference``, run from the same starting point) and scikit-learn where it has the
model. The VAE's log-likelihood is estimated twice with ``genfast.mc``: by naive sampling from
the prior and by importance sampling from the encoder, each with its standard error and
effective sample size. A figure of k-means centres, GMM samples and VAE samples and
reconstructions is written when matplotlib is installed (``pip install "genfast[demo]"``).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import threading
import time
from pathlib import Path

import numpy as np

from . import reference

N_TRAIN_FRACTION = 1500 / 1797  # of the digits used, the rest is held out
REG_COVAR = 0.01  # pixel variance added to every covariance (border pixels are always 0)
N_CLUSTERS = 10
MAX_ITER = 100
LATENT_DIM, HIDDEN = 8, (128, 64)
BATCH_SIZE, LEARNING_RATE = 64, 3e-3
CHUNK_SIZE = 128
SETTINGS = {  # (VAE epochs, of which the numpy baseline trains, Monte Carlo samples per held-out digit)
    "full": (40, 4, 1000),
    "quick": (10, 2, 200),
}


# --------------------------------------------------------------------------- progress
class _Progress(contextlib.AbstractContextManager):
    """'  <label> ...' on stderr, an elapsed-time ticker once the step passes a second (on a
    terminal), and 'done in x s' at the end."""

    def __init__(self, label: str, stream=None):
        self.label, self.stream = label, stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self._stop = threading.Event()

    def _tick(self):
        while not self._stop.wait(1.0):
            self.stream.write(f"\r  {self.label} ... {time.perf_counter() - self.start:.0f} s")
            self.stream.flush()

    def __enter__(self):
        self.start = time.perf_counter()
        self.stream.write(f"  {self.label} ...")
        self.stream.flush()
        self._thread = threading.Thread(target=self._tick, daemon=True) if self.tty else None
        if self._thread:
            self._thread.start()
        return self

    def __exit__(self, exc_type, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join()
        state = "failed" if exc_type else "done"
        prefix = f"\r  {self.label} ..." if self.tty else ""
        self.stream.write(f"{prefix} {state} in {time.perf_counter() - self.start:.1f} s\n")
        self.stream.flush()
        return False


def _timed(fn):
    """(fn(), seconds)."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


# --------------------------------------------------------------------------- data
def load_data(seed: int, n_digits: int | None = None):
    """(train, test) float64 digits in [0, 1], shuffled by the seed; n_digits uses a subset."""
    from sklearn.datasets import load_digits

    X = load_digits().data / 16.0
    X = X[np.random.default_rng(seed).permutation(len(X))][:n_digits]
    n_train = max(N_CLUSTERS + 1, int(round(N_TRAIN_FRACTION * len(X))))
    if n_train >= len(X):
        raise ValueError(f"n_digits={n_digits} leaves no held-out digits; use at least {N_CLUSTERS + 2}")
    return X[:n_train], X[n_train:]


def _full_covariances(nk, scatter, D):
    """Covariances of an M-step: scatter / N_k + reg_covar I."""
    return scatter / nk[:, None, None] + REG_COVAR * np.eye(D)


def _gaussian_log_density(X, weights, means, covariances):
    """Mean log p(x) of X under a full-covariance mixture, in numpy."""
    P = reference.precisions_cholesky_from_covariances(covariances, "full")
    return float(reference.gmm_log_resp(X, weights, means, P, "full")[0].mean())


# --------------------------------------------------------------------------- steps
def step_gaussian(genfast, Xtr, Xte, device, sklearn_mixture):
    """One full-covariance Gaussian by maximum likelihood."""
    g, t_gen = _timed(lambda: genfast.Gaussian("full", reg_covar=REG_COVAR, device=device).fit(Xtr))

    def ref():
        mean, cov = reference.gaussian_mle(Xtr, "full")
        return _gaussian_log_density(Xte, np.ones(1), mean[None], (cov + REG_COVAR * np.eye(len(mean)))[None])

    ref_ll, t_ref = _timed(ref)
    sk, t_sk = _timed(lambda: sklearn_mixture.GaussianMixture(1, reg_covar=REG_COVAR).fit(Xtr))
    return {"key": "gaussian", "step": "Gaussian (full covariance)", "metric": "log p(x)", "value": float(g.score(Xte)),
            "reference_value": ref_ll, "sklearn_value": float(sk.score(Xte)),
            "genfast_s": t_gen, "reference_s": t_ref, "sklearn_s": t_sk}, g


def step_kmeans(genfast, Xtr, Xte, device, sklearn_cluster, seed):
    """Lloyd's k-means from the same k-means++ centres for every implementation."""
    C0, _ = reference.kmeans_plusplus(Xtr, N_CLUSTERS, random_state=seed)
    params = dict(n_clusters=N_CLUSTERS, init=C0, n_init=1, max_iter=MAX_ITER, tol=0.0)
    km, t_gen = _timed(lambda: genfast.KMeans(**params, device=device).fit(Xtr))

    def ref():
        C, labels = C0, None
        for _ in range(MAX_ITER):  # until no point changes cluster
            C_new, new_labels, _ = reference.lloyd_iteration(Xtr, C)
            if labels is not None and (new_labels == labels).all():
                break
            C, labels = C_new, new_labels
        return C

    C_ref, t_ref = _timed(ref)
    sk, t_sk = _timed(lambda: sklearn_cluster.KMeans(**params, algorithm="lloyd").fit(Xtr))
    held_out = lambda C: float(reference.kmeans_assign(Xte, C)[1].mean())  # noqa: E731
    return {"key": "kmeans", "step": f"KMeans (K={N_CLUSTERS})", "metric": "inertia", "value": held_out(_host(km.cluster_centers_)),
            "reference_value": held_out(C_ref), "sklearn_value": held_out(sk.cluster_centers_),
            "genfast_s": t_gen, "reference_s": t_ref, "sklearn_s": t_sk, "n_iter": int(km.n_iter_)}, km


def step_gmm(genfast, Xtr, Xte, device, sklearn_mixture, km_labels):
    """EM for a full-covariance mixture, every implementation from the k-means partition."""
    D = Xtr.shape[1]
    nk, sums, scatter = reference.gmm_suff_stats(Xtr, np.eye(N_CLUSTERS)[km_labels], "full")
    init = dict(weights_init=nk / nk.sum(), means_init=sums / nk[:, None],
                precisions_init=np.linalg.inv(_full_covariances(nk, scatter, D)))
    params = dict(n_components=N_CLUSTERS, covariance_type="full", reg_covar=REG_COVAR, max_iter=MAX_ITER, **init)
    gmm, t_gen = _timed(lambda: genfast.GaussianMixture(**params, device=device).fit(Xtr))

    def ref():  # as many EM iterations as genfast ran
        weights, means = init["weights_init"], init["means_init"]
        covariances = np.linalg.inv(init["precisions_init"])
        for _ in range(gmm.n_iter_):
            P = reference.precisions_cholesky_from_covariances(covariances, "full")
            _, nk, sums, scatter = reference.gmm_em_step(Xtr, weights, means, P, "full")
            weights, means, covariances = nk / nk.sum(), sums / nk[:, None], _full_covariances(nk, scatter, D)
        return _gaussian_log_density(Xte, weights, means, covariances)

    ref_ll, t_ref = _timed(ref)
    sk, t_sk = _timed(lambda: sklearn_mixture.GaussianMixture(**params).fit(Xtr))
    return {"key": "gmm", "step": f"GaussianMixture (K={N_CLUSTERS}, full)", "metric": "log p(x)", "value": float(gmm.score(Xte)),
            "reference_value": ref_ll, "sklearn_value": float(sk.score(Xte)),
            "genfast_s": t_gen, "reference_s": t_ref, "sklearn_s": t_sk, "n_iter": int(gmm.n_iter_)}, gmm


def _train_vae_on_reference(vae, X, epochs, seed):
    """The VAE's training loop with the ELBO and its gradients from genfast.reference (numpy)
    instead of the fused kernels: the numpy baseline of a training run."""
    import torch

    opt = torch.optim.Adam(vae.parameters(), lr=LEARNING_RATE)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(X), generator=gen)
        for i in range(0, len(X), BATCH_SIZE):
            xb = X[order[i:i + BATCH_SIZE]]
            mu, logvar = vae.encode(xb)
            out, _ = vae.decode(vae.reparameterize(mu, logvar, gen))
            host = [t.detach().cpu().double().numpy() for t in (xb, out, mu, logvar)]
            grads = reference.elbo_gradients(*host)
            # loss = -mean_b ELBO_b, so d loss / d input = -(d sum_b ELBO_b / d input) / B
            tensors = (out, mu, logvar)
            upstream = [torch.from_numpy(-grads[k] / len(xb)).to(t) for k, t in zip(("decoder_out", "mu", "logvar"), tensors)]
            opt.zero_grad(set_to_none=True)
            torch.autograd.backward(tensors, upstream)
            opt.step()


def step_vae(genfast, Xtr, Xte, device, epochs, baseline_epochs, seed, progress):
    """An MLP VAE with a Bernoulli decoder, trained with the fused ELBO; the same model trained
    for a few epochs on the numpy ELBO gives the reference time. Times are per epoch."""
    import torch

    make = lambda: genfast.VAE(Xtr.shape[1], LATENT_DIM, HIDDEN, random_state=seed, device=device)  # noqa: E731
    Xtr32, Xte32 = (torch.as_tensor(X, dtype=torch.float32, device=device) for X in (Xtr, Xte))
    # one untimed epoch over one batch each: torch's and genfast.torch's one-time set-up is not timed
    make().fit(Xtr32[:BATCH_SIZE], epochs=1, batch_size=BATCH_SIZE, progress=False, random_state=seed)
    _train_vae_on_reference(make(), Xtr32[:BATCH_SIZE], 1, seed)
    vae = make()
    _, t_gen = _timed(lambda: vae.fit(Xtr32, epochs=epochs, batch_size=BATCH_SIZE, lr=LEARNING_RATE,
                                      progress=progress, random_state=seed))
    # (off a terminal the caller's one progress line covers this step too)
    with _Progress(f"the same VAE on the numpy ELBO, {baseline_epochs} epochs") if progress else contextlib.nullcontext():
        _, t_ref = _timed(lambda: _train_vae_on_reference(make(), Xtr32, baseline_epochs, seed))
    value = vae.elbo(Xte32, generator=torch.Generator(device=device).manual_seed(seed))
    return {"key": "vae", "step": f"VAE (L={LATENT_DIM}, {epochs} epochs), per epoch", "metric": "ELBO", "value": value,
            "genfast_s": t_gen / epochs, "reference_s": t_ref / baseline_epochs}, vae


def _reference_log_likelihood(vae, x, n_samples, proposal, seed):
    """genfast.mc.log_likelihood's estimate in numpy float64, from the same latent draws: the
    same torch generator, chunks and decoder; log-weights and log-mean-exp by genfast.reference."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        mu, logvar = (t.double().numpy() for t in vae.encode(x))
        B, L = mu.shape
        log_w = []
        for start in range(0, n_samples, CHUNK_SIZE):
            m = min(CHUNK_SIZE, n_samples - start)
            eps32 = torch.randn((B, m, L), generator=gen, dtype=vae.dtype)
            eps = eps32.double().numpy()
            # log N(v | 0, I) summed over the latent dimensions
            log_normal = lambda v: -0.5 * (v * v).sum(-1) - 0.5 * L * math.log(2 * math.pi)  # noqa: E731
            if proposal == "prior":
                z32, log_prior, log_q = eps32, log_normal(eps), log_normal(eps)
            else:
                # z = mu + sigma eps; log q(z | x) = log N(eps | 0, I) - sum_l logvar_l / 2
                z = mu[:, None, :] + np.exp(0.5 * logvar)[:, None, :] * eps
                z32 = torch.as_tensor(z, dtype=vae.dtype)
                log_prior, log_q = log_normal(z), log_normal(eps) - 0.5 * logvar.sum(-1, keepdims=True)
            out = vae.decode(z32.reshape(B * m, L))[0].double().numpy().reshape(B, m, -1)
            log_w.append(reference.log_importance_weights(np.asarray(x, np.float64), out, log_prior, log_q))
    return reference.logmeanexp_stats(np.concatenate(log_w, axis=1))[0]


def step_likelihood(genfast, vae, Xte, n_samples, proposal, seed):
    """log p(x) of the held-out digits by Monte Carlo (mean over digits of the per-digit
    estimates, with the mean standard error and ESS)."""
    import copy

    import torch

    cpu_vae = copy.deepcopy(vae).cpu()  # genfast.mc runs on the CPU
    x = torch.as_tensor(Xte, dtype=torch.float32)
    label = "prior sampling" if proposal == "prior" else "importance sampling"
    with _Progress(f"VAE log p(x) by {label}, {n_samples} samples per digit"):
        est, t_gen = _timed(lambda: genfast.mc.log_likelihood(cpu_vae, x, n_samples, proposal, CHUNK_SIZE,
                                                              generator=torch.Generator().manual_seed(seed)))
        ref, t_ref = _timed(lambda: _reference_log_likelihood(cpu_vae, x, n_samples, proposal, seed))
    ll, se, ess = (t.double().numpy() for t in est)
    return {"key": proposal, "step": f"VAE log p(x), {label}", "metric": "log p(x)", "value": float(ll.mean()),
            "std_error": float(se.mean()), "ess": float(ess.mean()), "n_samples": n_samples,
            "reference_value": float(ref.mean()), "genfast_s": t_gen, "reference_s": t_ref}


# --------------------------------------------------------------------------- output
def _host(a):
    return a.cpu().numpy() if hasattr(a, "cpu") else np.asarray(a)


def _seconds(v):
    return "-" if v is None else (f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s")


def format_table(rows) -> str:
    """The end-of-run table: one line per step."""
    header = ["step", "held-out (per digit)", "genfast", "numpy ref.", "vs ref.", "scikit-learn", "|genfast - ref.|"]
    lines = []
    for r in rows:
        value = f"{r['metric']} {r['value']:.2f}"
        if "std_error" in r:
            value += f" +- {r['std_error']:.3f} (ESS {r['ess']:.0f} of {r['n_samples']})"
        lines.append([r["step"], value, _seconds(r["genfast_s"]), _seconds(r["reference_s"]),
                      f"{r['reference_s'] / r['genfast_s']:.2g}x", _seconds(r.get("sklearn_s")),
                      f"{abs(r['value'] - r['reference_value']):.2g}" if "reference_value" in r else "-"])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(line) for line in lines])


def write_figure(path: Path, km, gmm, vae, Xte, seed) -> bool:
    """k-means centres, GMM samples, VAE samples, held-out digits and their VAE reconstructions,
    as rows of 8x8 images; False (nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    import torch

    gmm.random_state = seed
    gen = torch.Generator(device=vae.device).manual_seed(seed)
    n = N_CLUSTERS
    rows = [("k-means centres", _host(km.cluster_centers_)),
            ("GMM samples", np.clip(gmm.sample(n)[0], 0, 1)),
            ("VAE samples", _host(vae.sample(n, generator=gen))),
            ("held-out digits", Xte[:n]),
            ("VAE reconstructions", _host(vae.reconstruct(torch.as_tensor(Xte[:n], dtype=torch.float32))))]
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.9, len(rows) * 1.05))
    for (title, images), row in zip(rows, axes):
        row[0].set_title(title, loc="left", fontsize=9)
        for image, ax in zip(images, row):
            ax.imshow(np.asarray(image, dtype=np.float64).reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
            ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- driver
def run(*, device: str = "auto", quick: bool = False, out: str | Path = "genfast-demo", seed: int = 0,
        threads: int = 1, n_digits: int | None = None, stream=None) -> dict:
    """Run the demo with every implementation (genfast, numpy, scikit-learn, torch) on
    `threads` CPU threads; returns {'rows': [...], 'figure': path or None, 'json': path, ...}."""
    import torch
    from threadpoolctl import threadpool_limits

    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):  # OpenMP (genfast, scikit-learn) and BLAS (numpy)
            return _run(device, quick, Path(out), seed, threads, n_digits, stream or sys.stdout)
    finally:
        torch.set_num_threads(torch_threads)


def _run(device, quick, out, seed, threads, n_digits, stream) -> dict:
    import genfast
    from sklearn import cluster as sklearn_cluster
    from sklearn import mixture as sklearn_mixture

    if device == "auto":
        device = "cuda" if genfast.config()["cuda"]["usable"] else "cpu"
    out.mkdir(parents=True, exist_ok=True)
    epochs, baseline_epochs, n_samples = SETTINGS["quick" if quick else "full"]
    Xtr, Xte = load_data(seed, n_digits)
    print(f"genfast demo on scikit-learn's digits: {len(Xtr)} training and {len(Xte)} held-out 8x8 images, "
          f"device {device}, {threads} CPU thread{'s' if threads > 1 else ''}, seed {seed}{', quick' if quick else ''}",
          file=stream, flush=True)
    t_start = time.perf_counter()
    rows = []
    with _Progress("one Gaussian"):
        row, _ = step_gaussian(genfast, Xtr, Xte, device, sklearn_mixture)
        rows.append(row)
    with _Progress(f"KMeans, K={N_CLUSTERS}"):
        row, km = step_kmeans(genfast, Xtr, Xte, device, sklearn_cluster, seed)
        rows.append(row)
    with _Progress(f"GaussianMixture, K={N_CLUSTERS}"):
        row, gmm = step_gmm(genfast, Xtr, Xte, device, sklearn_mixture, _host(km.labels_))
        rows.append(row)
    tty = sys.stderr.isatty()  # on a terminal the VAE's own progress bar, else one line per step
    if tty:
        print(f"  VAE, {epochs} epochs:", file=sys.stderr, flush=True)
    with contextlib.nullcontext() if tty else _Progress(f"VAE, {epochs} epochs, and {baseline_epochs} on the numpy ELBO"):
        row, vae = step_vae(genfast, Xtr, Xte, device, epochs, baseline_epochs, seed, progress=tty)
    rows.append(row)
    for proposal in ("prior", "posterior"):
        rows.append(step_likelihood(genfast, vae, Xte, n_samples, proposal, seed))

    figure = out / "genfast-demo.png"
    wrote_figure = write_figure(figure, km, gmm, vae, Xte, seed)
    print("\n" + format_table(rows), file=stream)
    print(f"\nEvery implementation ran on {threads} CPU thread{'s' if threads > 1 else ''}. "
          "log p(x) is in nats per held-out digit: the Gaussian models' densities on [0, 1]^64 and the VAE's "
          "Bernoulli likelihood of the intensities are not in the same units. inertia: mean squared "
          "distance to the nearest centre. numpy ref.: genfast.reference from the same start (for the VAE: "
          "the same training loop on the numpy ELBO and its gradients; for log p(x): the same latent draws). "
          "+- and ESS: the mean over digits of each estimate's standard error and effective sample size.",
          file=stream)
    result = {"device": device, "quick": quick, "seed": seed, "threads": threads, "n_train": len(Xtr), "n_test": len(Xte),
              "vae_epochs": epochs, "mc_samples": n_samples, "rows": rows,
              "total_seconds": time.perf_counter() - t_start,
              "figure": str(figure) if wrote_figure else None}
    json_path = out / "genfast-demo.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    result["json"] = str(json_path)
    if wrote_figure:
        print(f"\nwrote the figure to {figure}", file=stream)
    else:
        print("\nno figure: matplotlib is not installed (pip install \"genfast[demo]\")", file=stream)
    print(f"wrote the numbers to {json_path}; {result['total_seconds']:.0f} s in all", file=stream)
    return result
