"""genfast.torch: the ELBO custom ops under autograd, opcheck, gradcheck and torch.compile,
against genfast.reference and a plain torch composite, on CPU (and CUDA where usable)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from genfast import reference

torch = pytest.importorskip("torch")
gt = pytest.importorskip("genfast.torch")
F = torch.nn.functional

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
DTYPES = [torch.float32, torch.float64]
REDUCTIONS = ["mean", "sum", "none"]
# (B, D, L): awkward sizes (one of each; off the SIMD width) and a typical row
SHAPES = {"B1_D1_L1": (1, 1, 1), "odd": (7, 17, 3), "mnist": (32, 784, 16)}
RTOL = {torch.float32: 2e-5, torch.float64: 1e-11, torch.float16: 2e-2, torch.bfloat16: 2e-2}


def gen(seed):
    return torch.Generator().manual_seed(seed)


def make_inputs(seed, shape, likelihood, dtype, device, *, requires_grad=True, per_element=True):
    """x, decoder_out, decoder_logvar (Gaussian with per_element, else None), mu, logvar; every
    floating input but x requires grad."""
    B, D, L = shape
    g = gen(seed)
    if likelihood == "bernoulli":
        x = (torch.rand(B, D, generator=g) < 0.3).double()
        out = 4 * torch.randn(B, D, generator=g, dtype=torch.float64)
    else:
        x = torch.randn(B, D, generator=g, dtype=torch.float64)
        out = x + 0.5 * torch.randn(B, D, generator=g, dtype=torch.float64)
    out_logvar = 2 * torch.rand(B, D, generator=g, dtype=torch.float64) - 1 if likelihood == "gaussian" and per_element else None
    mu = torch.randn(B, L, generator=g, dtype=torch.float64)
    logvar = torch.rand(B, L, generator=g, dtype=torch.float64) * 4 - 3
    cast = lambda t: None if t is None else t.to(dtype=dtype, device=device)  # noqa: E731
    x, out, out_logvar, mu, logvar = (cast(t) for t in (x, out, out_logvar, mu, logvar))
    for t in (out, out_logvar, mu, logvar):
        if t is not None:
            t.requires_grad_(requires_grad)
    return x, out, out_logvar, mu, logvar


def np64(t):
    return None if t is None else t.detach().cpu().double().numpy()


def composite(x, out, out_logvar, mu, logvar, likelihood, beta, variance=None):
    """The same per-sample ELBO in plain torch (the benchmark's eager peer)."""
    if likelihood == "bernoulli":
        rec = -F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(1)
    else:
        lv = out_logvar if out_logvar is not None else torch.full_like(out, math.log(variance or 1.0))
        rec = -0.5 * (math.log(2 * math.pi) + lv + (x - out) ** 2 * torch.exp(-lv)).sum(1)
    kl = 0.5 * (mu**2 + torch.exp(logvar) - logvar - 1).sum(1)
    return rec - beta * kl


def reduce_np(a, reduction):
    return a.mean() if reduction == "mean" else a.sum() if reduction == "sum" else a


# --------------------------------------------------------------------------- values and gradients
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_elbo_and_gradients_match_reference(seed, device, dtype, likelihood, reduction, shape):
    x, out, out_logvar, mu, logvar = make_inputs(seed, shape, likelihood, dtype, device)
    beta = 0.75
    value = gt.elbo(x, out, mu, logvar, likelihood, beta, reduction, decoder_logvar=out_logvar)
    args = (np64(x), np64(out), np64(mu), np64(logvar), likelihood, np64(out_logvar), None, beta)
    ref = reduce_np(reference.elbo(*args)[0], reduction)
    assert value.dtype == dtype and value.device.type == device
    assert tuple(value.shape) == (() if reduction != "none" else (shape[0],))
    np.testing.assert_allclose(np64(value), ref, rtol=RTOL[dtype], atol=RTOL[dtype], err_msg=f"seed={seed}")
    # d(sum_b w_b ELBO_b) for random upstream weights w (or the reduction's own)
    upstream = torch.randn(value.shape, generator=gen(seed + 1), dtype=dtype).to(device)
    (value * upstream).sum().backward()
    w = np64(upstream) * (np.ones(shape[0]) / (shape[0] if reduction == "mean" else 1))
    grads = reference.elbo_gradients(*args)
    for name, t in (("decoder_out", out), ("decoder_logvar", out_logvar), ("mu", mu), ("logvar", logvar)):
        if t is not None:
            want = grads[name] * np.reshape(w, (-1, 1))
            np.testing.assert_allclose(np64(t.grad), want, rtol=RTOL[dtype], atol=RTOL[dtype] * np.abs(want).max(),
                                       err_msg=f"grad {name}; seed={seed}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_elbo_matches_a_plain_torch_composite(seed, device, likelihood):
    """Values and gradients, float32, against the composite the benchmark times."""
    ours = make_inputs(seed, (64, 100, 8), likelihood, torch.float32, device)
    theirs = [None if t is None else t.detach().clone().requires_grad_(t.requires_grad) for t in ours]
    x, out, out_logvar, mu, logvar = ours
    a = gt.elbo(x, out, mu, logvar, likelihood, 0.5, "sum", decoder_logvar=out_logvar)
    b = composite(theirs[0], theirs[1], theirs[2], theirs[3], theirs[4], likelihood, 0.5).sum()
    (-a).backward()
    (-b).backward()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-3)
    for o, t in zip(ours[1:], theirs[1:]):
        if o is not None:
            torch.testing.assert_close(o.grad, t.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_pieces_match_reference(seed, device):
    x, out, out_logvar, mu, logvar = make_inputs(seed, (9, 13, 5), "gaussian", torch.float64, device)
    xb = (x > 0).double()
    np.testing.assert_allclose(np64(gt.kl_normal_std(mu, logvar, "none")),
                               reference.kl_normal_std(np64(mu), np64(logvar))[0], rtol=1e-12)
    np.testing.assert_allclose(np64(gt.bernoulli_log_likelihood(xb, out, "sum")),
                               reference.bernoulli_log_likelihood(np64(xb), np64(out))[0].sum(), rtol=1e-12)
    np.testing.assert_allclose(np64(gt.gaussian_log_likelihood(x, out, out_logvar)),
                               reference.gaussian_log_likelihood(np64(x), np64(out), np64(out_logvar))[0].mean(),
                               rtol=1e-12)
    np.testing.assert_allclose(np64(gt.gaussian_log_likelihood(x, out, variance=0.2, reduction="none")),
                               reference.gaussian_log_likelihood(np64(x), np64(out), math.log(0.2))[0], rtol=1e-12)
    e, r, k = gt.elbo(x, out, mu, logvar, "gaussian", 2.0, decoder_logvar=out_logvar, return_terms=True)
    torch.testing.assert_close(e, r - 2.0 * k)


def test_terms_carry_their_own_gradients(seed):
    """return_terms: a loss built from rec and kl with other weights (the upstream of each
    output of the op) gets the matching gradients."""
    x, out, _, mu, logvar = make_inputs(seed, (6, 11, 4), "bernoulli", torch.float64, "cpu")
    e, r, k = gt.elbo(x, out, mu, logvar, beta=1.0, reduction="sum", return_terms=True)
    (-(0.5 * e + 2.0 * r - 0.3 * k)).backward()
    grads = reference.elbo_gradients(np64(x), np64(out), np64(mu), np64(logvar), beta=1.0)
    # 0.5 (rec - kl) + 2 rec - 0.3 kl = 2.5 rec - 0.8 kl
    np.testing.assert_allclose(np64(out.grad), -2.5 * grads["decoder_out"], rtol=1e-12)
    np.testing.assert_allclose(np64(mu.grad), -0.8 * grads["mu"], rtol=1e-12)


def test_gradients_only_where_required(seed):
    x, out, _, mu, logvar = make_inputs(seed, (5, 6, 3), "bernoulli", torch.float64, "cpu", requires_grad=False)
    mu.requires_grad_(True)
    gt.elbo(x, out, mu, logvar).backward()
    assert out.grad is None and logvar.grad is None and mu.grad is not None
    with torch.no_grad():
        value = gt.elbo(x, out, mu, logvar)
    assert not value.requires_grad
    # the data's own gradient, when asked for: d rec / dx = logits
    x.requires_grad_(True)
    gt.elbo(x, out, mu, logvar, reduction="sum").backward()
    torch.testing.assert_close(x.grad, out)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_the_usual_loss_reuses_the_forward_rows(seed, reduction):
    """loss = -elbo(...) (and -log-likelihood, +kl) is the upstream the forward computes its
    rows for: the backward passes them on without the rescaling op, and they are right."""
    x, out, _, mu, logvar = make_inputs(seed, (5, 9, 3), "bernoulli", torch.float64, "cpu")
    losses = [lambda: -gt.elbo(x, out, mu, logvar, beta=0.4, reduction=reduction),
              lambda: -gt.bernoulli_log_likelihood(x, out, reduction) + gt.kl_normal_std(mu, logvar, reduction)]
    for loss_fn in losses:
        for t in (out, mu, logvar):
            t.grad = None
        loss = loss_fn()
        with torch.profiler.profile() as prof:
            (loss if reduction != "none" else loss.sum()).backward()
        names = {e.name for e in prof.events()}
        assert "genfast::elbo_backward" not in names, "the rows should have been used as they are"
        beta = 0.4 if loss_fn is losses[0] else 1.0
        grads = reference.elbo_gradients(np64(x), np64(out), np64(mu), np64(logvar), beta=beta)
        scale = -1.0 / 5 if reduction == "mean" else -1.0
        for name, t in (("decoder_out", out), ("mu", mu), ("logvar", logvar)):
            np.testing.assert_allclose(np64(t.grad), scale * grads[name], rtol=1e-12, err_msg=f"{name}; seed={seed}")
    # any other upstream goes through the rescaling op
    (2.5 * gt.elbo(x, out, mu, logvar, reduction=reduction).sum()).backward()
    with torch.profiler.profile() as prof:
        gt.elbo(x, out, mu, logvar, reduction=reduction).sum().backward()
    assert "genfast::elbo_backward" in {e.name for e in prof.events()}


def test_backward_twice_with_retain_graph(seed):
    x, out, _, mu, logvar = make_inputs(seed, (4, 5, 2), "bernoulli", torch.float64, "cpu")
    loss = -gt.elbo(x, out, mu, logvar)
    loss.backward(retain_graph=True)
    once = out.grad.clone()
    loss.backward()
    torch.testing.assert_close(out.grad, 2 * once)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_and_image_shaped_inputs(seed, device):
    """Transposed / strided views give the contiguous result; (B, C, H, W) data is flattened."""
    g = gen(seed)
    x = (torch.rand(3, 4, 5, 6, generator=g) < 0.5).double().to(device)
    logits = torch.randn(6, 5, 4, 3, generator=g, dtype=torch.float64).to(device).permute(3, 2, 1, 0).requires_grad_()
    mu_big = torch.randn(3, 8, generator=g, dtype=torch.float64).to(device)
    mu, logvar = mu_big[:, ::2], mu_big[:, 1::2]
    assert not logits.is_contiguous() and not mu.is_contiguous()
    value = gt.elbo(x, logits, mu, logvar, reduction="none")
    flat = [np64(t).reshape(3, -1) for t in (x, logits)]
    np.testing.assert_allclose(np64(value), reference.elbo(*flat, np64(mu), np64(logvar))[0], rtol=1e-12)
    value.sum().backward()
    want = reference.elbo_gradients(*flat, np64(mu), np64(logvar))["decoder_out"].reshape(3, 4, 5, 6)
    np.testing.assert_allclose(np64(logits.grad), want, rtol=1e-12)


# --------------------------------------------------------------------------- extreme values
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_values_give_finite_values_and_gradients(seed, device, dtype):
    """Logits of +-100, log-variances from -30 to 30, x exactly 0 or 1."""
    g = gen(seed)
    B, D = 6, 10
    x = (torch.rand(B, D, generator=g) < 0.5).to(dtype)
    choice = lambda values, shape: torch.tensor(values, dtype=dtype)[torch.randint(len(values), shape, generator=g)]  # noqa: E731
    logits = choice([-100.0, -20.0, 0.0, 20.0, 100.0], (B, D))
    out_logvar = choice([-30.0, -5.0, 0.0, 5.0, 30.0], (B, D))
    mean = x + 0.1
    mu = torch.randn(B, 6, generator=g, dtype=dtype)
    logvar = torch.tensor([-30.0, -1e-7, 0.0, 1e-7, 15.0, 30.0], dtype=dtype).repeat(B, 1)
    tensors = [t.to(device).requires_grad_(t is not x) for t in (x, logits, out_logvar, mean, mu, logvar)]
    x, logits, out_logvar, mean, mu, logvar = tensors
    for likelihood, out, lv in (("bernoulli", logits, None), ("gaussian", mean, out_logvar)):
        for t in tensors:
            t.grad = None
        value = gt.elbo(x, out, mu, logvar, likelihood, reduction="none", decoder_logvar=lv)
        value.sum().backward()
        args = (np64(x), np64(out), np64(mu), np64(logvar), likelihood, np64(lv))
        assert torch.isfinite(value).all()
        np.testing.assert_allclose(np64(value), reference.elbo(*args)[0], rtol=RTOL[dtype])
        for name, grad in reference.elbo_gradients(*args).items():
            t = dict(decoder_out=out, decoder_logvar=lv, mu=mu, logvar=logvar).get(name)
            if t is None:
                continue
            assert torch.isfinite(t.grad).all(), f"{likelihood}: grad {name}"
            np.testing.assert_allclose(np64(t.grad), grad, rtol=RTOL[dtype], atol=RTOL[dtype],
                                       err_msg=f"{likelihood}: grad {name}; seed={seed}")


# --------------------------------------------------------------------------- torch.library checks
def opcheck_samples(device):
    """Argument tuples of genfast::elbo_forward: both likelihoods, with and without gradient
    rows (at various scales), KL-only and reconstruction-only calls, a non-contiguous input.
    An input requires grad exactly when its gradient rows are asked for, as genfast.torch.elbo
    calls it."""
    x, out, out_logvar, mu, logvar = (None if t is None else t.detach() for t in
                                      make_inputs(0, (5, 7, 3), "gaussian", torch.float64, device))
    xb = (x > 0).double()
    strided = out.t().contiguous().t()
    samples = [
        (xb, out, None, mu, logvar, "bernoulli", 0.0, 0.5, [False, True, False, True, True], -1.0, 1.0),
        (x, out, out_logvar, mu, logvar, "gaussian", 0.0, 1.0, [True, True, True, True, True], 1.0, 1.0),
        (x, out, None, mu, logvar, "gaussian", -0.7, 2.0, [False, True, False, False, True], 0.5, -2.0),
        (x, out, out_logvar, mu, logvar, "gaussian", 0.0, 1.0, [False] * 5, 1.0, 1.0),
        (None, None, None, mu, logvar, "bernoulli", 0.0, 1.0, [False, False, False, True, True], 1.0, 0.25),
        (xb, strided, None, None, None, "bernoulli", 0.0, 1.0, [False, True, False, False, False], -0.2, 1.0),
    ]
    return [tuple(None if t is None else t.clone().requires_grad_(want) for t, want in zip(args[:5], args[8]))
            + args[5:] for args in samples]


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_forward(device):
    for args in opcheck_samples(device):
        torch.library.opcheck(torch.ops.genfast.elbo_forward.default, args)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_backward(seed, device):
    g = gen(seed)
    rows = [torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(0, dtype=torch.float64),
            torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64),
            torch.randn(4, 3, generator=g, dtype=torch.float64)]
    w = torch.randn(4, generator=g, dtype=torch.float64)
    rows, w = [r.to(device) for r in rows], w.to(device)
    for weights in ((w, w), (w, None), (None, w.expand(4))):
        torch.library.opcheck(torch.ops.genfast.elbo_backward.default, (*rows, *weights))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("likelihood, per_element", [("bernoulli", False), ("gaussian", True), ("gaussian", False)])
def test_gradcheck(seed, device, likelihood, per_element):
    x, out, out_logvar, mu, logvar = make_inputs(seed, (3, 5, 2), likelihood, torch.float64, device,
                                                 per_element=per_element)
    x.requires_grad_(likelihood == "gaussian")
    variance = None if per_element or likelihood == "bernoulli" else 0.6
    for reduction in REDUCTIONS:
        def f(x, out, mu, logvar, *lv):
            return gt.elbo(x, out, mu, logvar, likelihood, 0.8, reduction, decoder_logvar=lv[0] if lv else None,
                           variance=variance, return_terms=True)
        inputs = (x, out, mu, logvar) + ((out_logvar,) if per_element else ())
        assert torch.autograd.gradcheck(f, inputs), f"{reduction}; seed={seed}"


def test_gradcheck_pieces(seed):
    x, out, out_logvar, mu, logvar = make_inputs(seed, (3, 4, 2), "gaussian", torch.float64, "cpu")
    xb = (x > 0).double()
    assert torch.autograd.gradcheck(lambda m, v: gt.kl_normal_std(m, v, "none"), (mu, logvar))
    assert torch.autograd.gradcheck(lambda o: gt.bernoulli_log_likelihood(xb, o, "sum"), (out,))
    assert torch.autograd.gradcheck(lambda o, v: gt.gaussian_log_likelihood(x, o, v), (out, out_logvar))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph_training_step(seed, device):
    """A compiled loss (decoder, ELBO; its backward compiled by AOTAutograd) gives eager's loss
    and gradients."""
    torch._dynamo.reset()
    g = gen(seed)
    x = (torch.rand(16, 12, generator=g) < 0.4).float().to(device)
    mu = torch.randn(16, 3, generator=g).to(device)
    logvar = torch.randn(16, 3, generator=g).to(device)
    decoder = torch.nn.Linear(3, 12).to(device)

    def loss_fn(x, mu, logvar):
        return -gt.elbo(x, decoder(mu), mu, logvar, beta=0.5)

    compiled = torch.compile(loss_fn, fullgraph=True)
    runs = []
    for fn in (loss_fn, compiled):
        decoder.zero_grad()
        m, lv = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
        loss = fn(x, m, lv)
        loss.backward()
        runs.append((loss.detach(), decoder.weight.grad.clone(), m.grad.clone(), lv.grad.clone()))
    for eager, comp in zip(*runs):
        torch.testing.assert_close(comp, eager, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- bad inputs
def good_args():
    x, out, _, mu, logvar = make_inputs(0, (4, 6, 2), "bernoulli", torch.float32, "cpu", requires_grad=False)
    return dict(x=x, decoder_out=out, mu=mu, logvar=logvar)


@pytest.mark.parametrize("change, error, message", [
    (dict(decoder_out=torch.zeros(4, 5)), ValueError, "decoder_out has shape"),
    (dict(mu=torch.zeros(3, 2), logvar=torch.zeros(3, 2)), ValueError, "mu holds 3 samples but x holds 4"),
    (dict(logvar=torch.zeros(4, 3)), ValueError, "logvar has shape"),
    (dict(mu=torch.zeros(4)), ValueError, "mu must have shape"),
    (dict(x=torch.zeros(4)), ValueError, "x must have shape"),
    (dict(x=torch.zeros(4, 6, dtype=torch.int64)), TypeError, "x must be a floating-point tensor"),
    (dict(mu=torch.zeros(4, 2, dtype=torch.int32)), TypeError, "mu must be a floating-point tensor"),
    (dict(decoder_out=torch.zeros(4, 6, dtype=torch.float64)), TypeError, "decoder_out has dtype torch.float64"),
    (dict(x=np.zeros((4, 6), np.float32)), TypeError, "x must be a torch.Tensor"),
    (dict(logvar=torch.zeros(4, 2, device="meta")), ValueError, "logvar is on meta"),
    (dict(decoder_out=torch.zeros(4, 6, dtype=torch.float16), x=torch.zeros(4, 6, dtype=torch.float16)),
     TypeError, "x has dtype torch.float16; on the CPU"),
    (dict(reduction="avg"), ValueError, "reduction must be one of"),
    (dict(likelihood="poisson"), ValueError, "likelihood must be one of"),
    (dict(beta=-1.0), ValueError, "beta must be finite and >= 0"),
    (dict(beta="1"), TypeError, "beta must be a number"),
    (dict(variance=1.0), ValueError, "Bernoulli likelihood takes no"),
    (dict(likelihood="gaussian", variance=0.0), ValueError, "variance must be positive"),
    (dict(likelihood="gaussian", decoder_logvar=torch.zeros(4, 5)), ValueError, "decoder_logvar has shape"),
])
def test_bad_arguments_raise_clear_errors(change, error, message):
    with pytest.raises(error, match=message):
        gt.elbo(**{**good_args(), **change})


def test_bad_arguments_of_the_pieces():
    with pytest.raises(ValueError, match="logits has shape"):
        gt.bernoulli_log_likelihood(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="logvar has shape"):
        gt.gaussian_log_likelihood(torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(3, 2))
    with pytest.raises(TypeError, match="logvar must be a floating-point tensor"):
        gt.kl_normal_std(torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.int64))


@pytest.mark.parametrize("shape", [(0, 4), (0, 0), (0, 2, 3), (3, 0)])
def test_empty_batch_or_features_do_not_crash_the_reshape(shape):
    """Found by the property tests: x.reshape(B, -1) raised torch's RuntimeError for an empty
    batch (B = 0: -1 is ambiguous); now B = 0 gives empty per-sample results and D = 0 a
    reconstruction term of 0."""
    x = torch.zeros(shape)
    B = shape[0]
    assert gt.bernoulli_log_likelihood(x, x, reduction="none").shape == (B,)
    assert gt.gaussian_log_likelihood(x, x, reduction="none").shape == (B,)
    mu = torch.zeros(B, 2)
    value = gt.elbo(x, x, mu, mu, reduction="none")
    assert value.shape == (B,) and (value == 0).all()


def test_elbo_of_an_empty_batch_with_mean_reduction():
    """Found by the property tests: reduction='mean' divided by B = 0 (ZeroDivisionError);
    now the mean over no samples is NaN, as torch's mean of an empty tensor."""
    x = torch.zeros(0, 3, requires_grad=True)
    mu = torch.zeros(0, 2, requires_grad=True)
    value = gt.elbo(x, x, mu, mu)
    assert value.shape == () and math.isnan(value.item())
    assert gt.elbo(x, x, mu, mu, reduction="sum").item() == 0.0


def test_direct_op_call_without_gradient_rows_refuses_to_backpropagate():
    args = good_args()
    out = args["decoder_out"].requires_grad_()
    values = torch.ops.genfast.elbo_forward(args["x"], out, None, None, None, "bernoulli", 0.0, 1.0, [False] * 5, 1.0, 1.0)
    with pytest.raises(RuntimeError, match="gradients=False for decoder_out"):
        values[0].sum().backward()


# --------------------------------------------------------------------------- CUDA only
@pytest.mark.gpu
def test_mismatched_devices_are_named():
    args = good_args()
    with pytest.raises(ValueError, match="mu is on cuda"):
        gt.elbo(**{**args, "mu": args["mu"].cuda(), "logvar": args["logvar"].cuda()})


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_cuda(seed, dtype):
    x, out, out_logvar, mu, logvar = make_inputs(seed, (64, 300, 16), "gaussian", dtype, "cuda")
    value = gt.elbo(x, out, mu, logvar, "gaussian", decoder_logvar=out_logvar, reduction="none")
    assert value.dtype == dtype
    ref = reference.elbo(np64(x), np64(out), np64(mu), np64(logvar), "gaussian", np64(out_logvar))[0]
    np.testing.assert_allclose(np64(value), ref, rtol=RTOL[dtype], atol=RTOL[dtype] * np.abs(ref).max())
    value.sum().backward()
    assert out.grad.dtype == dtype and torch.isfinite(out.grad.float()).all()


@pytest.mark.gpu
def test_cuda_runs_on_the_current_stream(seed):
    """Work is enqueued on the caller's current stream: a side stream's result is complete
    once that stream is synchronised, and equals the default stream's."""
    x, out, _, mu, logvar = make_inputs(seed, (256, 784, 32), "bernoulli", torch.float32, "cuda", requires_grad=False)
    expected = gt.elbo(x, out, mu, logvar, reduction="none")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = gt.elbo(x, out, mu, logvar, reduction="none")
    side.synchronize()
    torch.testing.assert_close(got, expected)
