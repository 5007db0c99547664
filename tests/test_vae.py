"""genfast.VAE: the model's pieces, its loss on the fused ops, and training on scikit-learn's
bundled digits (test ELBO must improve clearly over the untrained model)."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import genfast  # noqa: E402
from genfast import reference  # noqa: E402

F = torch.nn.functional


def digits_split(seed):
    """scikit-learn's 8x8 digits scaled to [0, 1], split 1500 / 297 by the seed."""
    from sklearn.datasets import load_digits

    X = load_digits().data.astype(np.float32) / 16.0
    order = np.random.default_rng(seed).permutation(len(X))
    return X[order[:1500]], X[order[1500:]]


def test_training_on_digits_improves_the_test_elbo(seed):
    train, test = digits_split(seed)
    vae = genfast.VAE(64, 8, hidden=(64, 32), random_state=seed % 2**31)
    before = vae.elbo(test, generator=torch.Generator().manual_seed(0))
    vae.fit(train, epochs=8, batch_size=50, lr=3e-3, progress=False, random_state=seed % 2**31)
    after = vae.elbo(test, generator=torch.Generator().manual_seed(0))
    # untrained: about -44 nats per digit; trained: about -28
    assert after > before + 10, f"test ELBO {before:.2f} -> {after:.2f}; seed={seed}"
    assert len(vae.history_) == 8 and vae.history_[-1] < vae.history_[0]


def test_fit_takes_torch_data_and_draws_a_progress_bar(seed, capsys):
    train, _ = digits_split(seed)
    vae = genfast.VAE(64, 4, hidden=(32,), random_state=0)
    vae.fit(torch.from_numpy(train[:300]).reshape(300, 8, 8), epochs=2, batch_size=100, random_state=1)
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err and "3/3" in err and "loss" in err
    vae.fit(train[:100], epochs=1, progress=False)
    assert capsys.readouterr().err == ""
    assert len(vae.history_) == 3


def test_same_seeds_same_model_and_training():
    X = np.random.default_rng(0).random((200, 10)).astype(np.float32)
    runs = []
    for _ in range(2):
        vae = genfast.VAE(10, 3, hidden=(16,), random_state=5)
        runs.append((vae.encoder[0].weight.detach().clone(), vae.fit(X, epochs=2, progress=False, random_state=7)))
    assert torch.equal(runs[0][0], runs[1][0])
    assert runs[0][1].history_ == runs[1][1].history_


@pytest.mark.parametrize("likelihood, variance", [("bernoulli", None), ("gaussian", None), ("gaussian", 0.5)])
def test_pieces_have_the_protocol_shapes(likelihood, variance):
    vae = genfast.VAE(12, 3, hidden=(8, 4), likelihood=likelihood, variance=variance, random_state=0)
    x = torch.rand(5, 12)
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (5, 3)
    out, out_logvar = vae.decode(vae.reparameterize(mu, logvar))
    assert out.shape == (5, 12)
    assert (out_logvar is not None) == (likelihood == "gaussian" and variance is None)
    assert vae.log_likelihood(x, out, out_logvar).shape == (5,)
    assert vae(x).shape == (5,)
    assert vae.sample(7).shape == (7, 12) and vae.sample(7, mean=False).shape == (7, 12)
    assert vae.reconstruct(x).shape == (5, 12)
    if likelihood == "bernoulli":
        s = vae.sample(20, mean=False)
        assert set(s.unique().tolist()) <= {0.0, 1.0}
        assert ((vae.reconstruct(x) > 0) & (vae.reconstruct(x) < 1)).all()


@pytest.mark.parametrize("likelihood, variance", [("bernoulli", None), ("gaussian", None), ("gaussian", 0.5)])
def test_loss_is_the_negative_elbo(seed, likelihood, variance):
    """loss(x) with a seeded generator equals the ELBO of the same draw of z, written out with
    genfast.reference."""
    vae = genfast.VAE(6, 2, hidden=(5,), likelihood=likelihood, variance=variance, beta=0.3,
                      dtype=torch.float64, random_state=seed % 2**31)
    x = torch.rand(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    loss = vae.loss(x, torch.Generator().manual_seed(3))
    mu, logvar = vae.encode(x)
    out, out_logvar = vae.decode(vae.reparameterize(mu, logvar, torch.Generator().manual_seed(3)))
    n = lambda t: None if t is None else t.detach().numpy()  # noqa: E731
    ref = reference.elbo(x.numpy(), n(out), n(mu), n(logvar), likelihood, n(out_logvar), variance, beta=0.3)[0]
    np.testing.assert_allclose(loss.item(), -ref.mean(), rtol=1e-12)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in vae.parameters())


def test_bad_arguments():
    with pytest.raises(ValueError, match="likelihood must be one of"):
        genfast.VAE(4, 2, likelihood="poisson")
    with pytest.raises(ValueError, match="Bernoulli likelihood takes no"):
        genfast.VAE(4, 2, variance=1.0)
    with pytest.raises(ValueError, match="latent_dim must be a positive int"):
        genfast.VAE(4, 0)
    vae = genfast.VAE(4, 2, hidden=(3,))
    with pytest.raises(ValueError, match="X has 5 features per sample"):
        vae.fit(np.zeros((10, 5)), progress=False)
    with pytest.raises(ValueError, match="needs data in \\[0, 1\\]"):
        vae.fit(np.full((10, 4), 2.0), progress=False)
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        vae.fit(np.zeros((10, 4)), epochs=0)


@pytest.mark.gpu
def test_trains_on_cuda(seed):
    train, test = digits_split(seed)
    vae = genfast.VAE(64, 8, hidden=(64, 32), device="cuda", random_state=0)
    before = vae.elbo(test)
    vae.fit(train, epochs=5, batch_size=50, lr=3e-3, progress=False)
    assert vae.elbo(test) > before + 10
    assert vae.sample(3).device.type == "cuda"


def test_vae_and_genfast_torch_load_torch_only_when_used():
    import subprocess
    import sys

    code = ("import sys, genfast\n"
            "assert 'torch' not in sys.modules\n"
            "assert genfast.VAE.__name__ == 'VAE' and genfast.torch.elbo is not None\n"
            "assert 'torch' in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
