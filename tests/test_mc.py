"""Monte Carlo likelihood estimation: the streaming log-mean-exp and fused importance-weight
kernels against genfast.reference, the estimators against exact log p(x) (linear-Gaussian model,
a GMM as a discrete latent), the torch logmeanexp op, and bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

import genfast
from genfast import mc, ops, reference

torch = pytest.importorskip("torch")
gt = pytest.importorskip("genfast.torch")

DTYPES = ("float32", "float64")
RTOL = {"float32": 2e-5, "float64": 1e-12}


def random_log_weights(rng, B, M, dtype):
    """Log-weights spread over ~30 nats, with some -inf entries and one all -inf row."""
    a = rng.normal(scale=10.0, size=(B, M))
    a[rng.random((B, M)) < 0.1] = -np.inf
    a[0] = -np.inf
    return a.astype(dtype)


def assert_stats_match(got, want, dtype):
    for name, g, w in zip(("log_mean", "ess", "std_error"), got, want):
        g = np.asarray(g, dtype=np.float64)
        assert not np.isnan(g).any(), f"{name} has NaN (an output not written?)"
        np.testing.assert_allclose(g, w, rtol=RTOL[dtype], atol=RTOL[dtype], err_msg=name)


# --------------------------------------------------------------------------- kernels vs reference
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M", [1, 7, 100, 1000])
def test_logmeanexp_stats_match_reference(rng, dtype, M):
    a = random_log_weights(rng, 9, M, dtype)
    assert_stats_match(ops.logmeanexp_stats(a), reference.logmeanexp_stats(a), dtype)
    log_mean, ess, se = ops.logmeanexp_stats(a)
    assert log_mean.dtype == np.dtype(dtype) and log_mean[0] == -np.inf and ess[0] == 0 and se[0] == np.inf


@pytest.mark.parametrize("dtype", DTYPES)
def test_streaming_chunks_equal_one_pass(rng, dtype):
    a = random_log_weights(rng, 6, 1000, dtype)
    acc = mc.LogMeanExp()
    for start, stop in ((0, 3), (3, 300), (300, 301), (301, 1000)):  # chunk sizes not dividing M
        acc.update(a[:, start:stop])
    assert acc.n_samples == 1000
    r = acc.result()
    assert_stats_match((r.log_likelihood, r.ess, r.std_error), ops.logmeanexp_stats(a), dtype)


def test_chunk_raising_the_max_rescales_earlier_sums(rng):
    a = np.concatenate([rng.normal(size=(3, 50)) - 700.0, rng.normal(size=(3, 50)) + 700.0], axis=1)
    r = mc.LogMeanExp().update(a[:, :50]).update(a[:, 50:]).result()
    assert_stats_match((r.log_likelihood, r.ess, r.std_error), reference.logmeanexp_stats(a), "float64")


@pytest.mark.parametrize("dtype", DTYPES)
def test_logmeanexp_along_any_dim_numpy_and_torch(rng, dtype):
    a = rng.normal(size=(4, 5, 6)).astype(dtype)
    for dim in (0, 1, -1):
        want = reference.logmeanexp_stats(a, axis=dim)[0]
        # log mean = max + log(sum) - log M: rounding on the scale of its terms, not of the
        # result (which can be near 0)
        atol = RTOL[dtype] * (np.abs(a).max() + np.log(a.shape[dim]))
        np.testing.assert_allclose(ops.logmeanexp(a, dim), want, rtol=RTOL[dtype], atol=atol)
        got = ops.logmeanexp(torch.from_numpy(a), dim)
        assert isinstance(got, torch.Tensor) and got.dtype == getattr(torch, dtype)
        np.testing.assert_allclose(got.numpy(), want, rtol=RTOL[dtype], atol=atol)


def test_finish_writes_every_output(rng):
    a = random_log_weights(rng, 5, 20, "float64")
    acc = ops._LogMeanExpState(5)
    acc.update(a)
    outs = [np.full(5, np.nan) for _ in range(3)]
    genfast._core.mc_logmeanexp_finish(20.0, acc.max, acc.sum, acc.sum_sq, *outs)
    assert_stats_match(outs, reference.logmeanexp_stats(a), "float64")


def random_decoder_problem(rng, B, m, D, likelihood, per_element, dtype):
    x = (rng.random((B, D)) < 0.5).astype(dtype) if likelihood == "bernoulli" else rng.normal(size=(B, D)).astype(dtype)
    out = rng.normal(scale=3.0, size=(B, m, D)).astype(dtype)
    logvar = rng.normal(scale=0.5, size=(B, m, D)).astype(dtype) if per_element else None
    log_prior, log_proposal = (rng.normal(size=(B, m)).astype(dtype) for _ in range(2))
    return x, out, logvar, log_prior, log_proposal


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("likelihood,per_element,variance",
                         [("bernoulli", False, None), ("gaussian", True, None), ("gaussian", False, 0.3)])
@pytest.mark.parametrize("D", [1, 37, 784])
def test_log_importance_weights_match_reference(rng, dtype, likelihood, per_element, variance, D):
    x, out, logvar, lp, lq = random_decoder_problem(rng, 3, 5, D, likelihood, per_element, dtype)
    got = ops.log_importance_weights(x, out, lp, lq, likelihood=likelihood, decoder_logvar=logvar, variance=variance)
    want = reference.log_importance_weights(x, out, lp, lq, likelihood, logvar, variance)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_allclose(got, want, rtol=RTOL[dtype] * 5, atol=RTOL[dtype] * D)


def test_gaussian_log_weights_with_a_precision_below_the_dtype():
    """Found by the thorough property profile: x = 1e38 with decoder log-variance 127 (float32)
    has (x - m)^2 exp(-s) = 7e20, but exp(-127) underflows float32 to 0 and (x - m) times that
    zero precision dropped the term: log w was -64 instead of -3.5e20. The residual is now
    standardised by exp(-s/2) first. (float64's case, exp(-s) below 1e-308 with a finite
    (x - m)^2 exp(-s), is beyond the float64 reference, which squares x - m first.)"""
    dtype, x_big, s_big = "float32", 1e38, 127.0
    x = np.array([[x_big, 1.0, -x_big]], dtype)
    out = np.array([[[0.125, 0.5, 3.0], [-2.0, 1.0, 0.0]]], dtype)
    logvar = np.array([[[s_big, 0.25, s_big], [s_big, -1.0, s_big]]], dtype)
    lp = np.array([[0.5, -1.0]], dtype)
    lq = np.array([[0.25, 0.75]], dtype)
    got = ops.log_importance_weights(x, out, lp, lq, likelihood="gaussian", decoder_logvar=logvar)
    want = reference.log_importance_weights(x, out, lp, lq, "gaussian", logvar)
    assert np.all(want < -1e20)
    np.testing.assert_allclose(got, want, rtol=RTOL[dtype] * 5)


def test_log_importance_weights_writes_every_output(rng):
    x, out, _, lp, lq = random_decoder_problem(rng, 4, 3, 17, "bernoulli", False, "float64")
    log_w = np.full((4, 3), np.nan)
    genfast._core.mc_log_importance_weights(x, out, None, "bernoulli", 0.0, lp, lq, log_w)
    np.testing.assert_allclose(log_w, reference.log_importance_weights(x, out, lp, lq), rtol=1e-12)


def test_numpy_and_cpu_tensor_chunks_mix(rng):
    a = random_log_weights(rng, 4, 30, "float64")
    r = mc.LogMeanExp().update(a[:, :10]).update(torch.from_numpy(a[:, 10:])).result()
    assert isinstance(r.log_likelihood, np.ndarray)  # the first chunk's placement
    assert_stats_match((r.log_likelihood, r.ess, r.std_error), reference.logmeanexp_stats(a), "float64")


def test_log_importance_weights_shape_errors_name_the_argument(rng):
    x, out, logvar, lp, lq = random_decoder_problem(rng, 2, 3, 4, "gaussian", True, "float64")
    for name, bad in (("decoder_logvar", logvar[:, :2]), ("log_proposal", lq[:1]), ("x", x[0])):
        args = {"x": x, "decoder_out": out, "decoder_logvar": logvar, "log_prior": lp, "log_proposal": lq,
                name: bad}
        with pytest.raises(ValueError, match=f"^{name} must"):
            ops.log_importance_weights(args["x"], args["decoder_out"], args["log_prior"], args["log_proposal"],
                                       likelihood="gaussian", decoder_logvar=args["decoder_logvar"])


# --------------------------------------------------------------------------- exact models
class LinearGaussian:
    """p(z) = N(0, I_L), p(x | z) = N(W z + b, s^2 I_D) with W = Q diag(c) (orthonormal Q), so the
    exact posterior N(S W^T (x - b) / s^2, S), S = (I + W^T W / s^2)^-1, is diagonal: encode()
    returns it exactly. Marginal: p(x) = N(b, W W^T + s^2 I)."""

    likelihood = "gaussian"

    def __init__(self, rng, D=6, L=3, s=0.5):
        q, _ = np.linalg.qr(rng.normal(size=(D, L)))
        self.W = q * rng.uniform(0.5, 2.0, size=L)
        self.b, self.variance, self.latent_dim = rng.normal(size=D), s * s, L
        self.post_var = 1.0 / (1.0 + (self.W**2).sum(0) / self.variance)

    def encode(self, x):
        x = torch.as_tensor(x, dtype=torch.float64)
        mu = (x - torch.from_numpy(self.b)) @ torch.from_numpy(self.W * self.post_var / self.variance)
        return mu, torch.log(torch.from_numpy(self.post_var)).expand_as(mu)

    def decode(self, z):
        return z @ torch.from_numpy(self.W.T) + torch.from_numpy(self.b), None

    def exact_log_px(self, x):
        from scipy.stats import multivariate_normal
        cov = self.W @ self.W.T + self.variance * np.eye(len(self.b))
        return multivariate_normal(self.b, cov).logpdf(x)


def test_exact_posterior_gives_zero_variance(rng, seed):
    model = LinearGaussian(rng)
    x = model.decode(torch.randn(4, 3, dtype=torch.float64))[0].numpy() + rng.normal(size=(4, 6))
    gen = torch.Generator().manual_seed(seed)
    r = mc.log_likelihood(model, x, n_samples=50, proposal="posterior", chunk_size=16, generator=gen)
    np.testing.assert_allclose(r.log_likelihood.numpy(), model.exact_log_px(x), rtol=1e-10)
    np.testing.assert_allclose(r.ess.numpy(), 50.0, rtol=1e-9)
    assert (r.std_error.numpy() < 1e-6).all()


def test_prior_sampling_converges_within_reported_error(rng, seed):
    model = LinearGaussian(rng, D=4, L=2, s=1.0)
    x = rng.normal(size=(5, 4)) + model.b
    gen = torch.Generator().manual_seed(seed)
    r = mc.log_likelihood(model, x, n_samples=20000, proposal="prior", chunk_size=4096, generator=gen)
    err = np.abs(r.log_likelihood.numpy() - model.exact_log_px(x))
    assert (err < 5 * r.std_error.numpy() + 1e-3).all(), (err, r.std_error)
    assert (r.ess.numpy() < 20000).all()


def test_inexact_posterior_converges_within_reported_error(rng, seed):
    model = LinearGaussian(rng, D=5, L=3, s=0.7)
    x = rng.normal(size=(4, 5)) + model.b
    exact_encode = model.encode
    model.encode = lambda x: (lambda mu, lv: (mu + 0.3, lv + 0.4))(*exact_encode(x))  # a wider, shifted q
    gen = torch.Generator().manual_seed(seed)
    r = mc.log_likelihood(model, x, n_samples=5000, proposal="posterior", chunk_size=1000, generator=gen)
    err = np.abs(r.log_likelihood.numpy() - model.exact_log_px(x))
    assert (r.std_error.numpy() > 0).all()
    assert (err < 5 * r.std_error.numpy() + 1e-3).all(), (err, r.std_error)


def test_gmm_as_discrete_latent_matches_score_samples(rng):
    X = np.concatenate([rng.normal(size=(100, 3)) + c for c in (0.0, 4.0, -4.0)])
    gmm = genfast.GaussianMixture(n_components=3, covariance_type="diag", random_state=0).fit(X)
    from scipy.stats import multivariate_normal
    # log w_k = log pi_k + log N(x | mu_k, S_k) - log(1/K): the mean over all K components is exact
    log_w = np.stack([np.log(w) + multivariate_normal(mu, np.diag(v)).logpdf(X) + np.log(3)
                      for w, mu, v in zip(gmm.weights_, gmm.means_, gmm.covariances_)], axis=1)
    np.testing.assert_allclose(ops.logmeanexp(log_w, 1), gmm.score_samples(X), rtol=1e-10)


def test_vae_estimates_are_consistent(seed):
    model = genfast.VAE(8, 2, hidden=(16,), random_state=seed % 1000)
    x = (torch.rand(3, 8, generator=torch.Generator().manual_seed(seed)) < 0.5).float()
    gen = torch.Generator().manual_seed(seed)
    post = mc.log_likelihood(model, x, 2000, "posterior", chunk_size=512, generator=gen)
    prior = mc.log_likelihood(model, x, 2000, "prior", chunk_size=512, generator=gen)
    assert post.log_likelihood.dtype == torch.float32 and post.log_likelihood.shape == (3,)
    diff = (post.log_likelihood - prior.log_likelihood).abs()
    assert (diff < 5 * (post.std_error + prior.std_error) + 1e-3).all()
    # the ELBO (the mean log-weight under q, here over 200 draws) lies below log p(x)
    elbo = model(x.repeat(200, 1)).detach().reshape(200, 3).mean(0)
    assert (elbo <= post.log_likelihood + 5 * post.std_error + 0.05).all()


def chunked_draws(seed, B, M, L, chunk_size, dtype):
    """The standard normal draws genfast.mc.log_likelihood makes from a generator seeded with
    `seed`: (B, m, L) per chunk, concatenated to (B, M, L)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randn((B, min(chunk_size, M - s), L), generator=gen, dtype=dtype)
                      for s in range(0, M, chunk_size)], dim=1)


@pytest.mark.parametrize("proposal", mc.PROPOSALS)
@pytest.mark.parametrize("M, chunk_size", [(1, 4), (37, 8), (64, 64), (50, 1)])
def test_vae_estimate_matches_reference_on_the_same_draws(seed, proposal, M, chunk_size):
    model = genfast.VAE(9, 3, hidden=(12,), random_state=seed % 1000)
    x = (torch.rand(5, 9, generator=torch.Generator().manual_seed(seed)) < 0.4).float()
    got = mc.log_likelihood(model, x, M, proposal, chunk_size=chunk_size,
                            generator=torch.Generator().manual_seed(seed))
    want = reference.log_likelihood(model, x, chunked_draws(seed, 5, M, 3, chunk_size, torch.float32), proposal)
    for g, w in zip(got, want):
        assert g.dtype == torch.float32 and g.shape == (5,)
        np.testing.assert_allclose(g.numpy(), w, rtol=2e-4, atol=2e-4)


def test_linear_gaussian_estimate_matches_reference_float64(rng, seed):
    model = LinearGaussian(rng)
    x = rng.normal(size=(3, 6)) + model.b
    exact_encode = model.encode
    model.encode = lambda x: (lambda mu, lv: (mu - 0.2, lv + 0.3))(*exact_encode(x))
    got = mc.log_likelihood(model, x, 300, "posterior", chunk_size=64, generator=torch.Generator().manual_seed(seed))
    want = reference.log_likelihood(model, x, chunked_draws(seed, 3, 300, 3, 64, torch.float64), "posterior")
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-10)


# --------------------------------------------------------------------------- torch op
def check_torch_logmeanexp_op(a):
    """opcheck, gradcheck along both dims and values of genfast.torch.logmeanexp for a float64
    (rows, cols) tensor a that requires grad (its device: the device under test)."""
    torch.library.opcheck(gt.logmeanexp_rows, (a,))
    assert torch.autograd.gradcheck(lambda t: gt.logmeanexp(t, 0), (a,))
    assert torch.autograd.gradcheck(lambda t: gt.logmeanexp(t, 1), (a,))
    got = gt.logmeanexp(a)
    assert got.device == a.device
    np.testing.assert_allclose(got.detach().cpu().numpy(), reference.logmeanexp_stats(a.detach().cpu().numpy())[0],
                               rtol=1e-12)


def check_all_minus_inf_row_has_zero_gradient(a):
    """For a float64 (3, M) tensor a (on the device under test) whose row 1 is set to -inf: -inf
    out, a zero gradient for that row and the normalised weights for the others."""
    a[1] = -math.inf
    a.requires_grad_()
    out = gt.logmeanexp(a)
    out[[0, 2]].sum().backward()
    assert out[1] == -math.inf
    assert torch.isfinite(a.grad).all() and (a.grad[1] == 0).all()
    np.testing.assert_allclose(a.grad[0].cpu().numpy(), torch.softmax(a.detach()[0], 0).cpu().numpy(), rtol=1e-12)


def test_torch_logmeanexp_opcheck_and_gradcheck(rng):
    check_torch_logmeanexp_op(torch.from_numpy(rng.normal(size=(4, 7))).requires_grad_())


def test_torch_logmeanexp_all_minus_inf_row_has_zero_gradient(rng):
    check_all_minus_inf_row_has_zero_gradient(torch.from_numpy(rng.normal(size=(3, 5))))


@pytest.mark.parametrize("shape, dim", [((3, 0), -1), ((0,), 0), ((2, 0, 4), 1)])
def test_torch_logmeanexp_with_no_samples_raises_value_error(shape, dim):
    """Found by the property tests: an empty slice reached torch's reshape(-1, 0), which
    raised RuntimeError ('cannot reshape tensor of 0 elements'); now the ValueError that
    ops.logmeanexp gives, naming a."""
    with pytest.raises(ValueError, match=r"^a has no samples"):
        gt.logmeanexp(torch.zeros(shape), dim)
    assert gt.logmeanexp(torch.zeros(0, 3), -1).shape == (0,)  # no rows but samples: empty result


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_logmeanexp_gradient_of_large_log_weights_is_the_softmax(dtype):
    """Found by the property tests: the gradient was exp(a_j - result) / M with the result
    rounded to the dtype; for float32 log-weights near 1e14 (ulp 8e6 > log M) it came out
    as 1/M instead of the softmax (0.5 instead of 1 here). Now shifted by the row's max."""
    a = torch.tensor([[1.2573e14, -1.32e14], [3e38, 3e38]], dtype=dtype, requires_grad=True)
    gt.logmeanexp(a).sum().backward()
    assert a.grad.tolist() == [[1.0, 0.0], [0.5, 0.5]]


def test_logmeanexp_takes_lists_like_the_other_ops():
    """Found by the property tests: a list reached a.ndim and raised AttributeError."""
    np.testing.assert_allclose(ops.logmeanexp([[0.0, math.log(3.0)]]), [math.log(2.0)], rtol=1e-15)
    with pytest.raises(TypeError, match=r"^a must be a real numeric array"):
        ops.logmeanexp([["x", "y"]])


# --------------------------------------------------------------------------- bad inputs
def test_bad_inputs_name_the_argument(rng):
    a = rng.normal(size=(3, 4))
    with pytest.raises(ValueError, match="dim"):
        ops.logmeanexp(a, 2)
    with pytest.raises(ValueError, match="chunk"):
        mc.LogMeanExp().update(np.full((2, 2), np.nan))
    for bad in (np.nan, np.inf):
        b = a.copy()
        b[1, 2] = bad
        with pytest.raises(ValueError, match="a contains NaN or \\+infinity"):
            ops.logmeanexp(b)
    with pytest.raises(TypeError, match="a must be"):
        ops.logmeanexp(a.astype(complex))
    with pytest.raises(ValueError, match="rows"):
        mc.LogMeanExp().update(a).update(a[:2])
    with pytest.raises(ValueError, match="update"):
        mc.LogMeanExp().result()
    x, out, _, lp, lq = random_decoder_problem(rng, 2, 3, 4, "bernoulli", False, "float64")
    with pytest.raises(ValueError, match="decoder_out"):
        ops.log_importance_weights(x, out[:, :, :3], lp, lq)
    with pytest.raises(ValueError, match="log_prior"):
        ops.log_importance_weights(x, out, lp[:, :2], lq)
    for name, arr, bad in (("decoder_out", out, np.nan), ("log_prior", lp, np.inf)):
        spoilt = arr.copy()
        spoilt[0, 1] = bad
        args = {"decoder_out": out, "log_prior": lp} | {name: spoilt}
        with pytest.raises(ValueError, match="contains NaN or infinity"):
            ops.log_importance_weights(x, args["decoder_out"], args["log_prior"], lq)
    with pytest.raises(ValueError, match="likelihood"):
        ops.log_importance_weights(x, out, lp, lq, likelihood="poisson")
    model = LinearGaussian(rng)
    with pytest.raises(ValueError, match="proposal"):
        mc.log_likelihood(model, x, 10, proposal="uniform")
    with pytest.raises(ValueError, match="n_samples"):
        mc.log_likelihood(model, x, 0)
    with pytest.raises(TypeError, match="a must be"):
        gt.logmeanexp(a)
