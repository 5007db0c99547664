"""The ELBO kernels (genfast._core.elbo / elbo_scale_rows, genfast.ops.elbo) against
genfast.reference on fresh random inputs: every output written, every mode of the fused pass
the same bits, any thread count the same bits, extreme inputs, bad arguments."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import as_kind, check_kind, to_np

from genfast import _core, ops, reference

DTYPES = ["float32", "float64"]
# (B, D, L): a single sample / feature / latent, sizes one off the SIMD width (16 float32 or
# 8 float64 lanes on AVX-512, fewer elsewhere), more than one accumulation block of 8 vectors
# per row (D = 130 float64, D > 128 float32), the benchmark's row shape.
SHAPES = {
    "B1_D1_L1": (1, 1, 1),
    "B1": (1, 784, 64),
    "D1": (50, 1, 3),
    "L1": (40, 17, 1),
    "lanes-1": (9, 15, 7),
    "lanes+1": (13, 17, 9),
    "odd": (37, 33, 5),
    "long_rows": (3, 1000, 130),
    "mnist": (64, 784, 64),
}
# (name, likelihood, per-element decoder log-variance, fixed variance)
LIKELIHOODS = {
    "bernoulli": ("bernoulli", False, None),
    "gaussian": ("gaussian", True, None),
    "gaussian_fixed": ("gaussian", False, 0.3),
}
EPS = {"float32": float(np.finfo(np.float32).eps), "float64": float(np.finfo(np.float64).eps)}


def random_inputs(rng, B, D, L, likelihood, per_element, dtype):
    """x (binary for the Bernoulli, continuous for the Gaussian), decoder output, decoder
    log-variance (or None), mu, logvar."""
    if likelihood == "bernoulli":
        x = (rng.random((B, D)) < 0.3).astype(dtype)
        out = rng.normal(0.0, 4.0, (B, D)).astype(dtype)
    else:
        x = rng.normal(0.0, 1.0, (B, D)).astype(dtype)
        out = (x + rng.normal(0.0, 0.5, (B, D))).astype(dtype)
    out_logvar = rng.uniform(-3.0, 3.0, (B, D)).astype(dtype) if per_element else None
    mu = rng.normal(0.0, 1.5, (B, L)).astype(dtype)
    logvar = rng.uniform(-4.0, 2.0, (B, L)).astype(dtype)
    return x, out, out_logvar, mu, logvar


def rec_scale(x, out, out_logvar, likelihood, variance):
    """sum_d of the magnitudes of each log-likelihood term's pieces: the size against which a
    sum's rounding is measured (the Gaussian's terms have both signs)."""
    x, out = x.astype(np.float64), out.astype(np.float64)
    if likelihood == "bernoulli":
        return (np.abs(x * out) + np.logaddexp(0.0, out)).sum(axis=1)
    s = out_logvar.astype(np.float64) if out_logvar is not None else np.log(variance or 1.0)
    return 0.5 * (np.log(2 * np.pi) + np.abs(s) + (x - out) ** 2 * np.exp(-s)).sum(axis=1)


def assert_close(name, got, want, scale, rtol, seed, context, atol=1e-300):
    """|got - want| <= rtol * scale + atol elementwise (scale broadcast), with a message naming
    the worst element."""
    got = np.asarray(got, dtype=np.float64)
    err = np.abs(got - want)
    tol = rtol * np.broadcast_to(scale, err.shape) + atol
    assert np.isfinite(got).all(), f"{name}: non-finite values; seed={seed} {context}"
    worst = np.unravel_index(np.argmax(err / tol), err.shape)
    assert np.all(err <= tol), (f"{name}: err {err[worst]:.3g} > tol {tol[worst]:.3g} at {worst} "
                                f"(got {got[worst]!r}, want {want[worst]!r}); seed={seed} {context}")


def kernel_call(x, out, out_logvar, mu, logvar, likelihood, variance, beta, outputs):
    _core.elbo(x=x, decoder_out=out, decoder_logvar=out_logvar, mu=mu, logvar=logvar, likelihood=likelihood,
               fixed_logvar=float(np.log(variance)) if variance else 0.0, beta=beta, rec_scale=1.0,
               kl_scale=-beta, **outputs)


def poisoned_outputs(B, D, L, dtype, per_element, *, values=True, grads=True):
    """Every output of the kernel, filled with NaN so that an element it does not write fails."""
    outs = {}
    if values:
        outs.update({n: np.full(B, np.nan, dtype) for n in ("elbo", "rec", "kl")})
    if grads:
        outs.update({n: np.full((B, D), np.nan, dtype) for n in ("grad_x", "grad_decoder_out")})
        if per_element:
            outs["grad_decoder_logvar"] = np.full((B, D), np.nan, dtype)
        outs.update({n: np.full((B, L), np.nan, dtype) for n in ("grad_mu", "grad_logvar")})
    return outs


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("lik", LIKELIHOODS.keys())
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_matches_reference_and_writes_every_output(rng, seed, shape, lik, dtype):
    B, D, L = shape
    likelihood, per_element, variance = LIKELIHOODS[lik]
    beta = float(rng.uniform(0.2, 2.0))
    x, out, out_logvar, mu, logvar = random_inputs(rng, B, D, L, likelihood, per_element, dtype)
    outs = poisoned_outputs(B, D, L, dtype, per_element)
    kernel_call(x, out, out_logvar, mu, logvar, likelihood, variance, beta, outs)

    context = f"shape={shape} {lik} {dtype} beta={beta}"
    ref_elbo, ref_rec, ref_kl = reference.elbo(x, out, mu, logvar, likelihood, out_logvar, variance, beta)
    grads = reference.elbo_gradients(x, out, mu, logvar, likelihood, out_logvar, variance, beta)
    # Sums are accumulated in float64: float32 is off by the rounding of its terms.
    rtol = 8 * EPS[dtype]
    r_scale = rec_scale(x, out, out_logvar, likelihood, variance)
    kl_scale = 0.5 * (mu.astype(np.float64) ** 2 + np.exp(logvar.astype(np.float64)) + np.abs(logvar) + 1).sum(axis=1)
    assert_close("rec", outs["rec"], ref_rec, r_scale, rtol, seed, context)
    assert_close("kl", outs["kl"], ref_kl, kl_scale, rtol, seed, context)
    assert_close("elbo", outs["elbo"], ref_elbo, r_scale + beta * kl_scale, rtol, seed, context)
    # Elementwise gradients: relative to each element's own pieces.
    x64, out64 = x.astype(np.float64), out.astype(np.float64)
    if likelihood == "bernoulli":
        out_scale = np.maximum(np.abs(grads["decoder_out"]), EPS[dtype])
        x_scale = np.abs(out64)
    else:
        s = out_logvar.astype(np.float64) if per_element else np.log(variance)
        out_scale = x_scale = (np.abs(x64) + np.abs(out64)) * np.exp(-s)
    assert_close("grad_decoder_out", outs["grad_decoder_out"], grads["decoder_out"], out_scale, 4 * rtol, seed, context)
    assert_close("grad_x", outs["grad_x"], grads["x"], x_scale, 4 * rtol, seed, context)
    if per_element:
        lv_scale = 0.5 * (1 + (x64 - out64) ** 2 * np.exp(-out_logvar.astype(np.float64)))
        assert_close("grad_decoder_logvar", outs["grad_decoder_logvar"], grads["decoder_logvar"], lv_scale,
                     8 * rtol, seed, context)
    latent_scale = beta * (np.abs(mu.astype(np.float64)) + np.exp(logvar.astype(np.float64)) + 1)
    assert_close("grad_mu", outs["grad_mu"], grads["mu"], latent_scale, 4 * rtol, seed, context)
    assert_close("grad_logvar", outs["grad_logvar"], grads["logvar"], latent_scale, 4 * rtol, seed, context)


@pytest.mark.parametrize("lik", LIKELIHOODS.keys())
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_mode_agrees(rng, seed, lik, dtype):
    """Values alone, gradients alone and both in one pass: each output the same to rounding (the
    compiler may contract a*b+c into an FMA differently in each instantiation)."""
    B, D, L = 21, 131, 19
    likelihood, per_element, variance = LIKELIHOODS[lik]
    inputs = random_inputs(rng, B, D, L, likelihood, per_element, dtype)
    both = poisoned_outputs(B, D, L, dtype, per_element)
    values = poisoned_outputs(B, D, L, dtype, per_element, grads=False)
    grads = poisoned_outputs(B, D, L, dtype, per_element, values=False)
    for outs in (both, values, grads):
        kernel_call(*inputs, likelihood, variance, 0.7, outs)
    for alone in (values, grads):
        for name in alone:
            np.testing.assert_allclose(alone[name], both[name], rtol=4 * EPS[dtype],
                                       atol=4 * EPS[dtype] * np.abs(both[name]).max(), err_msg=f"{name}; seed={seed}")


def test_results_do_not_depend_on_the_thread_count(rng, seed):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    B, D, L = 301, 200, 20
    inputs = random_inputs(rng, B, D, L, "gaussian", True, "float32")
    many = poisoned_outputs(B, D, L, "float32", True)
    one = poisoned_outputs(B, D, L, "float32", True)
    kernel_call(*inputs, "gaussian", None, 1.0, many)
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        kernel_call(*inputs, "gaussian", None, 1.0, one)
    for name in many:
        assert np.array_equal(many[name], one[name]), f"{name}; seed={seed}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_bernoulli_elements_over_the_whole_logit_range(dtype):
    """One element per row (D = 1): every logit from -110 to 110 with x = 0 and x = 1, where
    x l and softplus(l) would cancel. Log-likelihoods and gradients within 2 ulp of the float64
    reference (float64: within the error of the reference's own exp(-|l|), |l| ulp), down to
    the type's underflow: results below its smallest subnormal are 0."""
    logits = np.linspace(-110.0, 110.0, 40_001).astype(dtype)[:, None]
    eps, tiny = EPS[dtype], float(np.finfo(dtype).smallest_subnormal)
    for value in (0.0, 1.0):
        x = np.full_like(logits, value)
        rec, grad = np.full(len(logits), np.nan, dtype), np.full_like(logits, np.nan)
        _core.elbo(x=x, decoder_out=logits, rec=rec, grad_decoder_out=grad)
        ref, ref_grad, _ = reference.bernoulli_log_likelihood(x, logits)
        assert_close("rec", rec, ref, np.abs(ref), 2 * eps, "-", f"x={value}", atol=4 * tiny)
        tol = (2 if dtype == "float32" else 4 * 110) * eps
        assert_close("grad", grad[:, 0], ref_grad[:, 0], np.abs(ref_grad[:, 0]), tol, "-", f"x={value}",
                     atol=4 * tiny)
        representable = np.abs(ref_grad[:, 0]) > 4 * tiny
        assert np.all(grad[representable, 0] * (1 if value else -1) > 0), "x - sigmoid(l) must keep its sign"


@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_inputs_are_finite_and_match_float64(rng, seed, dtype):
    """Logits of +-100, log-variances from -30 to 30 (decoder and posterior), x exactly 0 or 1."""
    B, D, L = 8, 40, 6
    x = (rng.random((B, D)) < 0.5).astype(dtype)
    logits = rng.choice([-100.0, -30.0, 0.0, 30.0, 100.0], size=(B, D)).astype(dtype)
    mean = rng.normal(0, 1, (B, D)).astype(dtype)
    out_logvar = rng.choice([-30.0, -10.0, 0.0, 10.0, 30.0], size=(B, D)).astype(dtype)
    mu = rng.normal(0, 1, (B, L)).astype(dtype)
    logvar = np.tile(np.array([-30.0, -1e-6, 0.0, 1e-6, 20.0, 30.0], dtype), (B, 1))
    cases = (("bernoulli", logits, None), ("gaussian", mean, out_logvar))
    for likelihood, out, lv in cases:
        outs = poisoned_outputs(B, D, L, dtype, lv is not None)
        kernel_call(x, out, lv, mu, logvar, likelihood, None, 1.0, outs)
        for name, a in outs.items():
            assert np.isfinite(a).all(), f"{likelihood}: {name} not finite; seed={seed}"
        ref = reference.elbo(x, out, mu, logvar, likelihood, lv)
        grads = reference.elbo_gradients(x, out, mu, logvar, likelihood, lv)
        for name, want in zip(("elbo", "rec", "kl"), ref):
            assert_close(name, outs[name], want, np.abs(want) + 1, 16 * EPS[dtype], seed, likelihood)
        for name, want in grads.items():
            assert_close("grad_" + name, outs["grad_" + name], want, np.abs(want) + 1, 16 * EPS[dtype], seed, likelihood)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_keeps_its_accuracy_near_the_prior(rng, seed, dtype):
    """mu = 0 and |logvar| << 1: exp(lv) - 1 - lv ~ lv^2 / 2 must not be lost to cancellation."""
    lv = (rng.choice([-1, 1], size=(4, 50)) * 10.0 ** rng.uniform(-8, -0.4, (4, 50))).astype(dtype)
    mu = np.zeros_like(lv)
    kl, grad = np.full(4, np.nan, dtype), np.full_like(lv, np.nan)
    _core.elbo(mu=mu, logvar=lv, kl=kl, grad_logvar=grad)
    ref_kl, _, ref_grad = reference.kl_normal_std(mu, lv)
    assert_close("kl", kl, ref_kl, ref_kl, 8 * EPS[dtype], seed, "")
    assert_close("grad_logvar", grad, ref_grad, np.abs(ref_grad), 8 * EPS[dtype], seed, "")


@pytest.mark.parametrize("dtype", DTYPES)
def test_scale_rows(rng, seed, dtype):
    rows = rng.normal(size=(37, 45)).astype(dtype)
    weight = rng.normal(size=37).astype(dtype)
    out = np.full_like(rows, np.nan)
    _core.elbo_scale_rows(rows, weight, out)
    assert np.array_equal(out, (weight[:, None] * rows).astype(dtype)), f"seed={seed}"
    # a zero weight zeroes its row, infinities included (not 0 * inf = NaN)
    rows[3, :5] = [np.inf, -np.inf, np.inf, 1.0, -2.0]
    rows[4, 0] = np.inf
    weight[3] = 0.0
    _core.elbo_scale_rows(rows, weight, out)
    assert not out[3].any() and out[4, 0] == np.copysign(np.inf, weight[4]), f"seed={seed}"


# --------------------------------------------------------------------------- genfast.ops.elbo
@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_op_returns_the_input_kind_and_matches_reference(rng, seed, kind, dtype):
    B, D, L = 33, 20, 4
    x, out, _, mu, logvar = random_inputs(rng, B, D, L, "bernoulli", False, dtype)
    xs = as_kind(kind, x, out, mu, logvar)
    e, r, k, grads = ops.elbo(*xs, beta=0.5, gradients=True)
    for a in (e, r, k):
        check_kind(kind, a, dtype, (B,), seed=seed, what="elbo values")
    assert set(grads) == {"decoder_out", "mu", "logvar"}
    for name, g in grads.items():
        check_kind(kind, g, dtype, {"decoder_out": (B, D)}.get(name, (B, L)), seed=seed, what=name)
    ref = reference.elbo(x, out, mu, logvar, beta=0.5)
    np.testing.assert_allclose(to_np(e), ref[0], rtol=1e-5 if dtype == "float32" else 1e-12, err_msg=f"seed={seed}")
    ref_grads = reference.elbo_gradients(x, out, mu, logvar, beta=0.5)
    for name, g in grads.items():
        np.testing.assert_allclose(to_np(g), ref_grads[name], rtol=1e-5, atol=1e-6, err_msg=f"{name} seed={seed}")


def test_op_gaussian_variants_and_missing_kl(rng, seed):
    B, D = 10, 7
    x, mean = rng.normal(size=(B, D)), rng.normal(size=(B, D))
    fixed = ops.elbo(x, mean, likelihood="gaussian", variance=2.5)
    per_element = ops.elbo(x, mean, likelihood="gaussian", decoder_logvar=np.full((B, D), np.log(2.5)))
    default = ops.elbo(x, mean, likelihood="gaussian")
    for a, b in zip(fixed, per_element):
        np.testing.assert_allclose(a, b, rtol=1e-13, err_msg=f"seed={seed}")
    np.testing.assert_allclose(default[1], reference.elbo(x, mean, likelihood="gaussian")[1], rtol=1e-13)
    assert np.all(fixed[2] == 0) and np.array_equal(fixed[0], fixed[1]), "no mu/logvar: kl = 0, elbo = rec"
    ints = ops.elbo(np.ones((2, 3), dtype=np.int64), np.zeros((2, 3)))
    assert ints[0].dtype == np.float64, "integer data become float64, as in every genfast op"


@pytest.mark.parametrize("call, message", [
    (lambda x, o, m, v: ops.elbo(x, o[:, :-1], m, v), "decoder_out has shape"),
    (lambda x, o, m, v: ops.elbo(x, o, m[:-1], v[:-1]), "mu holds 4 samples"),
    (lambda x, o, m, v: ops.elbo(x, o, m, v[:, :-1]), "logvar has shape"),
    (lambda x, o, m, v: ops.elbo(x, o, m, None), "both mu and logvar"),
    (lambda x, o, m, v: ops.elbo(x[0], o[0], m, v), "x must be 2-d"),
    (lambda x, o, m, v: ops.elbo(x, o, m, v, likelihood="poisson"), "likelihood must be one of"),
    (lambda x, o, m, v: ops.elbo(x, o, m, v, variance=2.0), "Bernoulli likelihood takes no"),
    (lambda x, o, m, v: ops.elbo(x, o, m, v, likelihood="gaussian", variance=-1.0), "variance must be positive"),
    (lambda x, o, m, v: ops.elbo(x, o, m, v, likelihood="gaussian", variance=1.0, decoder_logvar=o),
     "not both"),
    (lambda x, o, m, v: ops.elbo(x, o, m, v, beta=-0.5), "beta must be finite and >= 0"),
    (lambda x, o, m, v: ops.elbo(x, o * np.nan, m, v), "decoder_out contains NaN"),
])
def test_op_rejects_bad_arguments(call, message):
    x, o, m, v = np.zeros((5, 3)), np.zeros((5, 3)), np.zeros((5, 2)), np.zeros((5, 2))
    with pytest.raises(ValueError, match=message):
        call(x, o, m, v)


def test_core_rejects_inconsistent_arrays():
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="grad_decoder_out must have shape"):
        _core.elbo(x=x, decoder_out=x, grad_decoder_out=np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="no log-variance"):
        _core.elbo(x=x, decoder_out=x, decoder_logvar=x, rec=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="needs mu and logvar"):
        _core.elbo(mu=np.zeros((4, 2), np.float32), kl=np.zeros(4, np.float32))
    with pytest.raises(TypeError):  # one dtype for every array (noconvert)
        _core.elbo(x=x, decoder_out=x.astype(np.float64), rec=np.zeros(4, np.float32))


@pytest.mark.parametrize("dtype", DTYPES)
def test_elbo_with_beta_zero_is_rec_even_when_kl_is_infinite(dtype):
    """Found by the property tests: with beta = 0 and a logvar whose exp overflows (kl = inf)
    the ELBO was rec - 0 * inf = NaN; the KL term weighted by 0 is now dropped."""
    x = np.zeros((2, 3), dtype)
    mu = np.zeros((2, 1), dtype)
    logvar = np.array([[1e4], [0.0]], dtype)
    elbo, rec, kl = ops.elbo(x, x, mu, logvar, likelihood="gaussian", beta=0.0)
    assert kl[0] == np.inf and np.isfinite(rec).all()
    np.testing.assert_array_equal(elbo, rec)
    assert ops.elbo(x, x, mu, logvar, likelihood="gaussian", beta=1.0)[0][0] == -np.inf


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gradients_with_beta_zero_are_zero_even_where_kl_overflows(dtype, kind):
    """Found by the thorough property profile: with beta = 0 and a logvar whose exp overflows,
    the KL gradient rows were -0 * inf = NaN; a term of weight zero now has gradient 0, as its
    value is dropped from the ELBO. The reconstruction gradients are untouched."""
    if kind == "torch":
        pytest.importorskip("torch")
    big = 127.0 if dtype == "float32" else 1000.0  # exp(big) overflows the dtype
    x = np.array([[0.0, 1.0], [1.0, 0.0]], dtype)
    out = np.array([[0.5, -2.0], [3.0, 0.25]], dtype)
    mu = np.array([[0.125, -1.0], [2.0, 0.0]], dtype)
    logvar = np.array([[big, 0.5], [-big, big]], dtype)
    args = as_kind(kind, x, out, mu, logvar)
    elbo, rec, kl, grads = ops.elbo(*args, beta=0.0, gradients=True)
    assert np.isinf(to_np(kl)).all()  # both rows have a logvar whose exp overflows
    np.testing.assert_array_equal(to_np(elbo), to_np(rec))
    for name in ("mu", "logvar"):
        got = to_np(grads[name])
        assert np.isfinite(got).all() and not got.any(), f"grad {name}: {got}"
    ref_grads = ops.elbo(*args, beta=1.0, gradients=True)[3]
    np.testing.assert_array_equal(to_np(grads["decoder_out"]), to_np(ref_grads["decoder_out"]))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_elbo_backward_with_beta_zero_where_kl_overflows(dtype, reduction):
    """The same through genfast.torch.elbo's autograd: with beta = 0 the KL rows are computed
    for weight 1 and rescaled by the upstream weight 0, which gave NaN where exp(logvar)
    overflows; mu and logvar now get zero gradients, decoder_out its usual one."""
    torch = pytest.importorskip("torch")
    import genfast.torch as gt

    tdt = getattr(torch, dtype)
    big = 127.0 if dtype == "float32" else 1000.0
    x = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=tdt)
    out = torch.tensor([[0.5, -2.0], [3.0, 0.25]], dtype=tdt, requires_grad=True)
    mu = torch.tensor([[0.125, -1.0], [2.0, 0.0]], dtype=tdt, requires_grad=True)
    logvar = torch.tensor([[big, 0.5], [-big, big]], dtype=tdt, requires_grad=True)
    e = gt.elbo(x, out, mu, logvar, beta=0.0, reduction=reduction)
    e.sum().backward()
    for name, t in (("mu", mu), ("logvar", logvar)):
        assert torch.isfinite(t.grad).all() and not t.grad.any(), f"grad {name}: {t.grad}"
    # d rec / d logit = x - sigmoid(logit), times the reduction's weight
    want = (x - torch.sigmoid(out.detach())) * (0.5 if reduction == "mean" else 1.0)
    torch.testing.assert_close(out.grad, want)


def test_gaussian_term_with_a_precision_below_the_dtype():
    """The Gaussian likelihood's precision exp(-s) underflows (float32 from s = 104) while
    (x - m)^2 exp(-s) is still huge: rec and the gradients were as if that term were 0. The
    residual is standardised by exp(-s/2) first; values and gradients match float64 (float32
    only: the float64 reference squares x - m first, so it cannot check float64's case)."""
    dtype, x_big, s_big = "float32", 1e38, 127.0
    x = np.array([[x_big, 1.0], [-x_big, 2.0]], dtype)
    out = np.array([[0.125, 0.5], [3.0, -1.0]], dtype)
    logvar = np.array([[s_big, 0.25], [s_big, -0.5]], dtype)
    rec, grads = ops.elbo(x, out, likelihood="gaussian", decoder_logvar=logvar, gradients=True)[1::2]
    want = reference.elbo(x, out, likelihood="gaussian", decoder_logvar=logvar)[1]
    want_grads = reference.elbo_gradients(x, out, likelihood="gaussian", decoder_logvar=logvar)
    assert np.all(want < -1e20)
    np.testing.assert_allclose(rec, want, rtol=1e-5)
    for name in ("decoder_out", "decoder_logvar"):
        np.testing.assert_allclose(grads[name], want_grads[name], rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_gradient_for_very_negative_logvar(dtype):
    """Found by the property tests: d kl / d logvar = (exp(lv) - 1) / 2 was formed as
    ((exp(lv) - 1 - lv) + lv) / 2, which loses the -1 for large |lv|: 0 instead of -1/2 at
    lv = -1.3e14 (float32) or -1e20 (float64). Now exp(lv) - 1 outside the series' range."""
    lv = np.array([[-1.3e14 if dtype == "float32" else -1e20, -30.0, 40.0 if dtype == "float32" else 300.0]], dtype)
    mu = np.zeros_like(lv)
    x = np.zeros((1, 1), dtype)
    _, _, kl, grads = ops.elbo(x, x, mu, lv, beta=1.0, gradients=True)
    want = -0.5 * np.expm1(lv.astype(np.float64))
    np.testing.assert_allclose(grads["logvar"], want, rtol=1e-6)
    np.testing.assert_allclose(kl, reference.kl_normal_std(mu, lv)[0], rtol=1e-6)
