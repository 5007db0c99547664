"""Property tests of genfast.torch (custom ops with autograd, CPU tensors) and genfast.mc
(see propcheck.py for the strategies and the oracle).

Contracts:
- genfast.torch.elbo / kl_normal_std / bernoulli_log_likelihood / gaussian_log_likelihood take
  float32/float64 CPU tensors of one dtype (anything else: TypeError naming the argument;
  float16/bfloat16 run on CUDA only). They do not check values: NaN/inf inputs give the
  reference's NaN/inf, never a NaN where the reference is finite. Values and gradients
  (through backward, for the reductions mean/sum/none with a random upstream gradient) are
  the float64 reference rounded to the dtype, with the per-element terms formed in the
  input's dtype (+-inf where the Gaussian's squared residual overflows it, see prop_ops).
- genfast.torch.logmeanexp: a tensor with at least one dimension and at least one sample
  along `dim` (else ValueError naming a or dim); NaN/+inf rejected (ValueError naming a),
  -inf is a zero weight. Gradient: the normalised weights.
- genfast.mc.LogMeanExp: the streaming result of several chunks equals the reference over
  their concatenation; genfast.mc.log_likelihood with a linear-Gaussian model whose log p(x)
  is known in closed form: with the posterior proposal equal to the true posterior every
  weight equals p(x), so the estimate is exact, ESS = M and the standard error 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

import genfast.torch as gt
from genfast import mc, reference

import propcheck as pc
from propcheck import Expect, args, assert_close, counted, examples, outcome, sizes
from prop_ops import bernoulli_x, grad_scales, rec_scale, term_overflows

TORCH_FLOAT = ("float32", "float64")


@st.composite
def torch_args(draw, shape, dtype, **options):
    """A torch Arg of `shape` in `dtype` (or, one time in eight, in any dtype)."""
    any_dtype = draw(st.integers(0, 7)) == 0
    return draw(args(shape, "torch", **({} if any_dtype else {"dtypes": (dtype,)}), **options))


def expect_tensor(e, a, name, dtype):
    """The model of genfast.torch._check_tensor: a float32/float64 tensor of x's dtype."""
    if a.dtype not in TORCH_FLOAT or a.dtype != dtype:
        e.invalid(name)
        return None
    return a.stored.astype(np.float64)


def leaf(a, grad):
    """The Arg's tensor as a fresh autograd leaf (same values, strides and dtype); the
    original stays untouched so outcome() can check it was not modified."""
    t = a.value
    if grad and t.is_floating_point():
        return t.detach().requires_grad_(True)
    return t


@given(B=sizes(0, 7), D=sizes(1, 10), L=sizes(1, 4), dtype=st.sampled_from(TORCH_FLOAT), data=st.data())
@examples(120)
def test_torch_elbo(B, D, L, dtype, data):
    likelihood = data.draw(st.sampled_from(["bernoulli", "gaussian", "gaussian"]), "likelihood")
    x = data.draw(bernoulli_x((B, D), "torch") if likelihood == "bernoulli" else torch_args((B, D), dtype), "x")
    out = data.draw(torch_args((B, D), dtype), "decoder_out")
    per_element = likelihood == "gaussian" and data.draw(st.booleans(), "per_element")
    out_logvar = data.draw(torch_args((B, D), dtype), "decoder_logvar") if per_element else None
    variance = data.draw(st.sampled_from([None, 0.5, 2.0]), "variance") \
        if likelihood == "gaussian" and not per_element else None
    mu = data.draw(torch_args((B, L), dtype), "mu")
    lv = data.draw(torch_args((B, L), dtype), "logvar")
    beta = data.draw(st.sampled_from([1.0, 0.0, 0.5, 3.0]), "beta")
    reduction = data.draw(st.sampled_from(["mean", "sum", "none"]), "reduction")
    grad_x = data.draw(st.booleans(), "grad_x")
    pc.record_example("test_torch_elbo", dict(likelihood=likelihood, x=x, decoder_out=out,
                                              decoder_logvar=out_logvar, variance=variance, mu=mu, logvar=lv,
                                              beta=beta, reduction=reduction, grad_x=grad_x))
    e = Expect()
    xv = expect_tensor(e, x, "x", x.dtype if x.dtype in TORCH_FLOAT else None)
    dt = x.dtype
    ov = expect_tensor(e, out, "decoder_out", dt)
    olv = expect_tensor(e, out_logvar, "decoder_logvar", dt) if per_element else None
    muv = expect_tensor(e, mu, "mu", dt)
    lvv = expect_tensor(e, lv, "logvar", dt)
    tensors = {n: leaf(a, grad=(n != "x" or grad_x)) for n, a in
               (("x", x), ("decoder_out", out), ("decoder_logvar", out_logvar), ("mu", mu), ("logvar", lv))
               if a is not None}
    arrays = {n: a.value for n, a in (("x", x), ("decoder_out", out), ("decoder_logvar", out_logvar),
                                      ("mu", mu), ("logvar", lv)) if a is not None}
    status, value = outcome(lambda: gt.elbo(tensors["x"], tensors["decoder_out"], tensors["mu"], tensors["logvar"],
                                            likelihood, beta, reduction, decoder_logvar=tensors.get("decoder_logvar"),
                                            variance=variance), arrays, expect=e)
    if status == "rejected":
        return
    logvar = olv if per_element else np.full_like(xv, math.log(variance or 1.0))
    with np.errstate(all="ignore"):
        per_sample, rec, kl = reference.elbo(xv, ov, muv, lvv, likelihood, olv, variance, beta)
        per_sample = rec if beta == 0 else per_sample
        r_scale = rec_scale(xv, ov, logvar, likelihood)
        k_scale = 0.5 * (muv ** 2 + np.exp(lvv) + np.abs(lvv) + 1).sum(1)
    over = term_overflows(xv, ov, logvar, likelihood, dt)
    shape = (B,) if reduction == "none" else ()
    pc.check_output(value, kind="torch", dtype=dt, shape=shape, what="elbo")
    reduce = {"none": lambda v: v, "sum": np.sum, "mean": np.mean}[reduction]
    with np.errstate(all="ignore"):
        want, scale = reduce(per_sample), reduce(r_scale if beta == 0 else r_scale + beta * k_scale)
    rt = 8 * pc.EPS[dt] if dt == "float64" else pc.RTOL[dt]
    assert_close(value, want, dtype=dt, what="elbo", scale=scale, rtol=rt,
                 inf_ok=over.any(1) if reduction == "none" else over.any())
    if B == 0 or not torch.isfinite(value).all():
        return  # no gradient to compare (empty mean is NaN; an infinite loss has no finite gradient)
    upstream = torch.randn(value.shape, dtype=value.dtype, generator=torch.Generator().manual_seed(B * 31 + D))
    (value * upstream).sum().backward()
    # d/d input of sum_b g_b ELBO_b (per-sample upstream weights g, as the reduction sets them)
    g = upstream.double().numpy()
    weights = np.broadcast_to(g / B if reduction == "mean" else g, (B,))[:, None]
    with np.errstate(all="ignore"):
        ref_grads = reference.elbo_gradients(xv, ov, muv, lvv, likelihood, olv, variance, beta)
        scales = grad_scales(xv, ov, logvar, muv, lvv, likelihood, beta)
    scales["x"] = scales["decoder_out"]
    for n, t in tensors.items():
        if not t.requires_grad:
            continue
        assert t.grad is not None, f"no gradient reached {n}"
        pc.check_output(t.grad, kind="torch", dtype=dt, shape=tuple(t.shape), what=f"{n}.grad")
        assert_close(t.grad, ref_grads[n] * weights, dtype=dt, what=f"{n}.grad", scale=scales[n] * np.abs(weights),
                     rtol=rt, inf_ok=over if n in ("x", "decoder_out", "decoder_logvar") else None)


@given(B=sizes(0, 7), D=sizes(0, 10), dtype=st.sampled_from(TORCH_FLOAT), data=st.data())
@examples(80)
def test_torch_log_likelihood_terms(B, D, dtype, data):
    """kl_normal_std, bernoulli_log_likelihood and gaussian_log_likelihood (reduction 'none')."""
    which = data.draw(st.sampled_from(["kl", "bernoulli", "gaussian"]), "which")
    a = data.draw(bernoulli_x((B, D), "torch") if which == "bernoulli" else torch_args((B, D), dtype), "a")
    b = data.draw(torch_args((B, D), dtype), "b")
    pc.record_example("test_torch_log_likelihood_terms", dict(which=which, a=a, b=b))
    names = {"kl": ("mu", "logvar"), "bernoulli": ("x", "logits"), "gaussian": ("x", "mean")}[which]
    e = Expect()
    av = expect_tensor(e, a, names[0], a.dtype if a.dtype in TORCH_FLOAT else None)
    bv = expect_tensor(e, b, names[1], a.dtype)
    call = {"kl": gt.kl_normal_std, "bernoulli": gt.bernoulli_log_likelihood,
            "gaussian": gt.gaussian_log_likelihood}[which]
    status, value = outcome(lambda: call(a.value, b.value, reduction="none"), {names[0]: a.value, names[1]: b.value},
                            expect=e)
    if status == "rejected":
        return
    dt = a.dtype
    pc.check_output(value, kind="torch", dtype=dt, shape=(B,), what=which)
    with np.errstate(all="ignore"):
        if which == "kl":
            want = reference.kl_normal_std(av, bv)[0]
            scale = 0.5 * (av ** 2 + np.exp(bv) + np.abs(bv) + 1).sum(1)
            over = np.zeros(B, bool)
        else:
            want = reference.elbo(av, bv, likelihood="bernoulli" if which == "bernoulli" else "gaussian")[1]
            scale = rec_scale(av, bv, np.zeros_like(av), "bernoulli" if which == "bernoulli" else "gaussian")
            over = term_overflows(av, bv, np.zeros_like(av), "gaussian", dt).any(1) if which == "gaussian" \
                else np.zeros(B, bool)
    rt = 8 * pc.EPS[dt] if dt == "float64" else pc.RTOL[dt]
    assert_close(value, want, dtype=dt, what=which, scale=scale, rtol=rt, inf_ok=over)


@given(ndim=st.integers(0, 3), data=st.data())
@examples(100)
def test_torch_logmeanexp(ndim, data):
    shape = tuple(data.draw(st.lists(sizes(0, 9), min_size=ndim, max_size=ndim), "shape"))
    a = data.draw(args(shape, "torch"), "a")
    dim = data.draw(st.sampled_from([-1, -1, 0, 1, ndim, -ndim - 1]), "dim")
    pc.record_example("test_torch_logmeanexp", dict(a=a, dim=dim))
    e = Expect()
    av, dt = e.effective(a, "a", allow_neg_inf=True)
    if not -ndim <= dim < ndim:
        e.invalid("dim")
    elif shape[dim] == 0:
        e.invalid("a")
    t = a.value.detach().requires_grad_(True) if a.value.is_floating_point() and a.dtype in TORCH_FLOAT \
        else a.value
    status, value = outcome(lambda: gt.logmeanexp(t, dim), {"a": a.value}, expect=e,
                            may_blame=("a",) if ndim == 0 else ())
    if status == "rejected":
        return
    out_shape = shape[:dim % ndim] + shape[dim % ndim + 1:]
    pc.check_output(value, kind="torch", dtype=dt, shape=out_shape, what="logmeanexp")
    with np.errstate(all="ignore"):
        want = reference.logmeanexp_stats(av, axis=dim)[0]
    spread = np.abs(np.where(np.isfinite(av), av, 0)).max(axis=dim) + 1
    assert_close(value, want, dtype=dt, what="logmeanexp", scale=spread)
    if not t.requires_grad or value.numel() == 0:
        return
    value.sum().backward()
    # d/da_i log mean exp(a) = softmax(a)_i (shifted by the max: a - logmeanexp loses log M to
    # rounding when |a| is large); an all -inf slice: 0
    with np.errstate(all="ignore"):
        top = np.max(av, axis=dim, keepdims=True)
        shifted = np.exp(av - np.where(np.isfinite(top), top, 0))
        grad = np.where(np.isfinite(top), shifted / shifted.sum(axis=dim, keepdims=True), 0.0)
    assert_close(t.grad, grad, dtype=dt, what="logmeanexp gradient", scale=1.0 / shape[dim])


@given(B=sizes(1, 5), chunks=st.lists(sizes(0, 7), min_size=1, max_size=4), kind=pc.kinds,
       dtype=st.sampled_from(TORCH_FLOAT), data=st.data())
@examples(60)
def test_mc_logmeanexp_streaming(B, chunks, kind, dtype, data):
    parts = [data.draw(args((B, m), kind, dtypes=(dtype,)), f"chunk{i}") for i, m in enumerate(chunks)]
    pc.record_example("test_mc_logmeanexp_streaming", dict(parts=parts))
    acc = mc.LogMeanExp()
    e = Expect()
    values = [e.effective(p, "chunk", allow_neg_inf=True)[0] for p in parts]
    if sum(chunks) == 0:
        e.invalid("chunk", "update")  # no samples at all: result() raises

    def run():
        for p in parts:
            acc.update(p.value)
        return acc.result()

    status, res = outcome(run, {f"chunk{i}": p.value for i, p in enumerate(parts)}, expect=e,
                          may_blame=("samples", "chunk"))
    if status == "rejected":
        return
    assert acc.n_samples == sum(chunks)
    allv = np.concatenate(values, axis=1)
    with np.errstate(all="ignore"):
        log_mean, ess, se = reference.logmeanexp_stats(allv, axis=1)
    for r, want, name, scale in ((res.log_likelihood, log_mean, "log_likelihood",
                                  np.abs(np.where(np.isfinite(allv), allv, 0)).max(1) + 1),
                                 (res.ess, ess, "ess", allv.shape[1]), (res.std_error, se, "std_error", 1.0)):
        pc.check_output(r, kind=kind, dtype=dtype, shape=(B,), what=name)
        assert_close(r, want, dtype=dtype, what=name, scale=scale)


class LinearGaussianModel:
    """p(z) = N(0, I), p(x | z) = N(W z + b, s2 I): log p(x) = log N(x | b, W W^T + s2 I) in
    closed form; its encoder returns the exact posterior q(z | x) = p(z | x)."""

    likelihood = "gaussian"

    def __init__(self, W, b, s2):
        self.W, self.b, self.variance = W, b, s2
        self.latent_dim = W.shape[1]

    def encode(self, x):
        W, s2 = self.W, self.variance
        prec = torch.eye(self.latent_dim, dtype=W.dtype) + W.T @ W / s2
        cov = torch.linalg.inv(prec)
        mu = (torch.as_tensor(x, dtype=W.dtype) - self.b) @ W @ cov.T / s2
        return mu, torch.log(torch.diagonal(cov)).expand_as(mu).contiguous()

    def decode(self, z):
        return z @ self.W.T + self.b, None

    def exact_log_px(self, x):
        W, b, s2 = (np.asarray(v, dtype=np.float64) for v in (self.W, self.b, self.variance))
        cov = W @ W.T + s2 * np.eye(W.shape[0])
        d = np.asarray(x, dtype=np.float64) - b
        _, logdet = np.linalg.slogdet(cov)
        return -0.5 * (np.einsum("bi,ij,bj->b", d, np.linalg.inv(cov), d) + logdet + W.shape[0] * np.log(2 * np.pi))


@given(B=sizes(1, 4), D=sizes(1, 6), seed=st.integers(0, 2**32 - 1), n_samples=st.sampled_from([1, 2, 7, 50, 0, -3]),
       chunk_size=st.sampled_from([1, 3, 128, 0]), proposal=st.sampled_from(["posterior", "prior", "other"]))
@examples(40)
@counted
def test_mc_log_likelihood(B, D, seed, n_samples, chunk_size, proposal):
    rng = np.random.default_rng(seed)
    W = torch.from_numpy(rng.standard_normal((D, 1)) * 0.5)  # one latent: q(z | x) diagonal is exact
    model = LinearGaussianModel(W, torch.from_numpy(rng.standard_normal(D)), 0.7)
    x = torch.from_numpy(rng.standard_normal((B, D)))
    e = Expect()
    if proposal == "other":
        e.invalid("proposal")
    if n_samples < 1:
        e.invalid("n_samples")
    if chunk_size < 1:
        e.invalid("chunk_size")
    gen = torch.Generator().manual_seed(seed % 2**31)
    status, res = outcome(lambda: mc.log_likelihood(model, x, n_samples, proposal, chunk_size, generator=gen),
                          {"x": x}, expect=e)
    if status == "rejected":
        return
    exact = model.exact_log_px(x.numpy())
    assert res.log_likelihood.shape == (B,) and res.ess.shape == (B,) and res.std_error.shape == (B,)
    if proposal == "posterior":  # every weight is p(x): exact, ESS = M, no error
        np.testing.assert_allclose(res.log_likelihood.numpy(), exact, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(res.ess.numpy(), n_samples, rtol=1e-9)
        assert (res.std_error.numpy() < 1e-6).all()
    else:  # unbiased in p(x): within a generous number of standard errors, ESS in [1, M]
        ess = res.ess.numpy()
        assert ((ess >= 1 - 1e-9) & (ess <= n_samples * (1 + 1e-9))).all(), ess
        assert np.isfinite(res.log_likelihood.numpy()).all()
