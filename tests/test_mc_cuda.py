"""The CUDA Monte Carlo likelihood kernels (genfast._cuda, and genfast.ops / genfast.mc /
genfast.torch on CUDA tensors) against genfast.reference and the CPU kernels.

The random inputs, tolerances and exact models are those of tests/test_mc.py, plus shapes that
cross the CUDA launch choices: the log-mean-exp update gives a row a warp below 1024 samples
per chunk and a block from there, and rows stride over the grid. The raw-pointer API is called
with NaN-poisoned outputs, so an element the kernels do not write fails the comparison.

Every test is marked `gpu`: conftest.py skips them unless torch sees a CUDA device and
genfast's _cuda module can use it.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from conftest import as_kind, check_kind, to_np
from test_mc import (
    DTYPES,
    RTOL,
    LinearGaussian,
    assert_stats_match,
    check_all_minus_inf_row_has_zero_gradient,
    check_torch_logmeanexp_op,
    random_decoder_problem,
    random_log_weights,
)

import genfast
from genfast import _backend as be
from genfast import mc, ops, reference

torch = pytest.importorskip("torch")
gt = pytest.importorskip("genfast.torch")

pytestmark = pytest.mark.gpu

# (B, M): B = 1 and M = 1; M below, at and past the warp/block switch at 1024; many rows.
LOGMEANEXP_SHAPES = {
    "B1_M1": (1, 1),
    "B2_M1": (2, 1),
    "B9_M7": (9, 7),
    "B9_M1000": (9, 1000),
    "B3_M1024_block": (3, 1024),
    "B4_M5001_block": (4, 5001),
    "B3000_M33_many_rows": (3000, 33),
}
# (B, m, D) of the importance weights: B = 1, m = 1, D = 1, D not a multiple of 32.
WEIGHT_SHAPES = {"B1_m1_D1": (1, 1, 1), "B3_m5_D37": (3, 5, 37), "B2_m70_D784": (2, 70, 784), "B40_m3_D33": (40, 3, 33)}
LIKELIHOODS = [("bernoulli", False, None), ("gaussian", True, None), ("gaussian", False, 0.3)]


def cuda(*arrays):
    return as_kind("cuda", *arrays)


def stats_np(stats):
    return tuple(to_np(s) for s in stats)


def assert_minus_inf_row(stats, row, seed):
    log_mean, ess, se = stats_np(stats)
    assert log_mean[row] == -np.inf and ess[row] == 0 and se[row] == np.inf, f"seed={seed}"


# --------------------------------------------------------------------------- log-mean-exp
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", LOGMEANEXP_SHAPES.values(), ids=LOGMEANEXP_SHAPES.keys())
def test_logmeanexp_stats_match_reference_and_cpu(rng, seed, dtype, shape):
    a = random_log_weights(rng, *shape, dtype)
    (ac,) = cuda(a)
    got = ops.logmeanexp_stats(ac)
    for out in got:
        check_kind("cuda", out, dtype, shape[:1], seed=seed, what="logmeanexp_stats")
    assert_stats_match(stats_np(got), reference.logmeanexp_stats(a), dtype)
    assert_stats_match(stats_np(got), ops.logmeanexp_stats(a), dtype)
    assert_minus_inf_row(got, 0, seed)
    assert np.array_equal(to_np(ac), a, equal_nan=True), f"input modified; seed={seed}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bounds", [(0, 3, 300, 301, 1000), (0, 1000, 3500), (0, 1, 2, 3)],
                         ids=["warp_chunks", "warp_then_block", "one_sample_chunks"])
def test_streaming_chunks_equal_one_pass(rng, seed, dtype, bounds):
    a = random_log_weights(rng, 6, bounds[-1], dtype)
    (ac,) = cuda(a)
    acc = mc.LogMeanExp()
    for start, stop in zip(bounds[:-1], bounds[1:]):  # chunk sizes not dividing M
        acc.update(ac[:, start:stop])
    assert acc.n_samples == bounds[-1]
    r = acc.result()
    check_kind("cuda", r.log_likelihood, dtype, (6,), seed=seed, what="LogMeanExp")
    chunked = stats_np((r.log_likelihood, r.ess, r.std_error))
    assert_stats_match(chunked, stats_np(ops.logmeanexp_stats(ac)), dtype)
    assert_stats_match(chunked, reference.logmeanexp_stats(a), dtype)


def test_chunk_raising_the_max_rescales_earlier_sums(rng, seed):
    a = np.concatenate([rng.normal(size=(3, 50)) - 700.0, rng.normal(size=(3, 2000)) + 700.0], axis=1)
    (ac,) = cuda(a)
    r = mc.LogMeanExp().update(ac[:, :50]).update(ac[:, 50:]).result()
    assert_stats_match(stats_np((r.log_likelihood, r.ess, r.std_error)), reference.logmeanexp_stats(a), "float64")


@pytest.mark.parametrize("dtype", DTYPES)
def test_logmeanexp_along_any_dim(rng, seed, dtype):
    a = rng.normal(size=(4, 5, 6)).astype(dtype)
    (ac,) = cuda(a)
    for dim in (0, 1, -1):
        got = ops.logmeanexp(ac, dim)
        check_kind("cuda", got, dtype, np.delete(a.shape, dim), seed=seed, what=f"logmeanexp dim={dim}")
        np.testing.assert_allclose(to_np(got), reference.logmeanexp_stats(a, axis=dim)[0], rtol=RTOL[dtype],
                                   err_msg=f"seed={seed}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (5, 20), (7, 2048)], ids=["B1_M1", "B5_M20", "B7_M2048_block"])
def test_raw_update_and_finish_write_every_output(rng, seed, dtype, shape):
    """The state after one update equals the CPU kernel's (the max exactly); finish writes
    every NaN-poisoned output."""
    cu = be.require_cuda()
    B, M = shape
    a = random_log_weights(rng, B, M, dtype)
    (ac,) = cuda(a)
    state = [torch.full((B,), -math.inf, dtype=torch.float64, device=ac.device)] + [
        torch.zeros(B, dtype=torch.float64, device=ac.device) for _ in range(2)]
    device, stream = be.cuda_launch_args(ac)
    cu.mc_logmeanexp_update(ac.data_ptr(), *(s.data_ptr() for s in state), B, M, dtype, device, stream)
    cpu_state = [np.full(B, -np.inf), np.zeros(B), np.zeros(B)]
    genfast._core.mc_logmeanexp_update(a, *cpu_state)
    np.testing.assert_array_equal(to_np(state[0]), cpu_state[0], err_msg=f"max; seed={seed}")
    for name, got, want in zip(("sum", "sum_sq"), state[1:], cpu_state[1:]):
        np.testing.assert_allclose(to_np(got), want, rtol=RTOL[dtype], err_msg=f"{name}; seed={seed}")
    outs = [torch.full((B,), math.nan, dtype=getattr(torch, dtype), device=ac.device) for _ in range(3)]
    cu.mc_logmeanexp_finish(float(M), *(s.data_ptr() for s in state), *(o.data_ptr() for o in outs), B, dtype,
                            device, stream)
    assert_stats_match(stats_np(outs), reference.logmeanexp_stats(a), dtype)


@pytest.mark.parametrize("M", [100, 3000], ids=["warp", "block"])
def test_logmeanexp_run_to_run_deterministic(rng, seed, M):
    (ac,) = cuda(rng.normal(scale=5.0, size=(50, M)))
    first = ops.logmeanexp_stats(ac)
    again = ops.logmeanexp_stats(ac)
    assert all(torch.equal(f, g) for f, g in zip(first, again)), f"seed={seed}"


@pytest.mark.parametrize("M", [10, 2000], ids=["warp", "block"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_logmeanexp_nan_or_plus_inf_raises(rng, seed, M, bad):
    a = rng.normal(size=(4, M))
    a[2, M // 2] = bad
    (ac,) = cuda(a)
    with pytest.raises(ValueError, match="a contains NaN or \\+infinity"):
        ops.logmeanexp(ac)
    with pytest.raises(ValueError, match="chunk contains NaN or \\+infinity"):
        mc.LogMeanExp().update(ac[:, : M // 2]).update(ac[:, M // 2:])
    all_nan = torch.full((3, M), math.nan, dtype=torch.float64, device=ac.device)
    all_nan[1] = -math.inf
    with pytest.raises(ValueError, match="a contains NaN"):
        ops.logmeanexp(all_nan)


def test_all_minus_inf_rows_across_chunks(rng, seed):
    a = random_log_weights(rng, 4, 300, "float64")
    a[2, :200] = -np.inf  # finite weights only in the second chunk
    (ac,) = cuda(a)
    r = mc.LogMeanExp().update(ac[:, :200]).update(ac[:, 200:]).result()
    assert_minus_inf_row((r.log_likelihood, r.ess, r.std_error), 0, seed)
    assert_stats_match(stats_np((r.log_likelihood, r.ess, r.std_error)), reference.logmeanexp_stats(a), "float64")


# --------------------------------------------------------------------------- importance weights
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("likelihood,per_element,variance", LIKELIHOODS)
@pytest.mark.parametrize("shape", WEIGHT_SHAPES.values(), ids=WEIGHT_SHAPES.keys())
def test_log_importance_weights_match_reference_and_cpu(rng, seed, dtype, likelihood, per_element, variance, shape):
    B, m, D = shape
    problem = random_decoder_problem(rng, B, m, D, likelihood, per_element, dtype)
    x, out, logvar, lp, lq = problem
    xc, outc, logvarc, lpc, lqc = cuda(*problem)
    got = ops.log_importance_weights(xc, outc, lpc, lqc, likelihood=likelihood, decoder_logvar=logvarc,
                                     variance=variance)
    check_kind("cuda", got, dtype, (B, m), seed=seed, what="log_importance_weights")
    want = reference.log_importance_weights(x, out, lp, lq, likelihood, logvar, variance)
    cpu = ops.log_importance_weights(x, out, lp, lq, likelihood=likelihood, decoder_logvar=logvar, variance=variance)
    for other, what in ((want, "reference"), (cpu, "cpu")):
        np.testing.assert_allclose(to_np(got), other, rtol=RTOL[dtype] * 5, atol=RTOL[dtype] * D,
                                   err_msg=f"vs {what}; seed={seed}")
    assert np.array_equal(to_np(outc), out), f"decoder_out modified; seed={seed}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("likelihood,per_element,variance", LIKELIHOODS)
def test_raw_log_importance_weights_writes_every_output(rng, seed, dtype, likelihood, per_element, variance):
    cu = be.require_cuda()
    B, m, D = 5, 9, 40
    problem = random_decoder_problem(rng, B, m, D, likelihood, per_element, dtype)
    xc, outc, logvarc, lpc, lqc = cuda(*problem)
    log_w = torch.full((B, m), math.nan, dtype=getattr(torch, dtype), device=xc.device)
    fixed_logvar = ops.gaussian_fixed_logvar(likelihood, problem[2], variance)
    device, stream = be.cuda_launch_args(xc)
    cu.mc_log_importance_weights(xc.data_ptr(), outc.data_ptr(), 0 if logvarc is None else logvarc.data_ptr(),
                                 likelihood, fixed_logvar, lpc.data_ptr(), lqc.data_ptr(), log_w.data_ptr(), B, m, D,
                                 dtype, device, stream)
    x, out, logvar, lp, lq = problem
    want = reference.log_importance_weights(x, out, lp, lq, likelihood, logvar, variance)
    np.testing.assert_allclose(to_np(log_w), want, rtol=RTOL[dtype] * 5, atol=RTOL[dtype] * D,
                               err_msg=f"seed={seed}")


@pytest.mark.parametrize("name,bad", [("decoder_out", math.nan), ("decoder_logvar", math.nan), ("log_prior", math.inf),
                                      ("log_proposal", -math.inf), ("x", math.nan), ("x", math.inf)])
def test_log_importance_weights_nan_or_inf_raises(rng, seed, name, bad):
    problem = random_decoder_problem(rng, 2, 3, 4, "gaussian", True, "float64")
    args = dict(zip(("x", "decoder_out", "decoder_logvar", "log_prior", "log_proposal"), cuda(*problem)))
    args[name].view(-1)[1] = bad  # log_proposal = -inf makes log_w = +inf
    message = "^x contains NaN or infinity" if name == "x" else "log_proposal contains NaN or infinity"
    with pytest.raises(ValueError, match=message):
        ops.log_importance_weights(args["x"], args["decoder_out"], args["log_prior"], args["log_proposal"],
                                   likelihood="gaussian", decoder_logvar=args["decoder_logvar"])


def test_log_importance_weights_minus_inf_weight_allowed(rng, seed):
    problem = random_decoder_problem(rng, 2, 3, 4, "bernoulli", False, "float32")
    xc, outc, _, lpc, lqc = cuda(*problem)
    lpc[1, 2] = -math.inf
    log_w = ops.log_importance_weights(xc, outc, lpc, lqc)
    assert log_w[1, 2] == -math.inf and torch.isfinite(log_w.view(-1)[:5]).all(), f"seed={seed}"


# --------------------------------------------------------------------------- streams, devices
@pytest.mark.parametrize("dtype", DTYPES)
def test_runs_on_current_stream(rng, seed, dtype):
    """Inputs written on a side stream just before the calls (after a long sleep on it):
    correct results after s.synchronize() mean the kernels were queued behind the writes."""
    a = random_log_weights(rng, 64, 3000, dtype)
    problem = random_decoder_problem(rng, 16, 64, 784, "bernoulli", False, dtype)
    sources = cuda(a, *(p for p in problem if p is not None))
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        copies = [torch.zeros_like(t) for t in sources]
        if hasattr(torch.cuda, "_sleep"):
            torch.cuda._sleep(50_000_000)  # keep s busy so a kernel on another stream would read zeros
        for c, src in zip(copies, sources):
            c.copy_(src)
        ac, xc, outc, lpc, lqc = copies
        stats = ops.logmeanexp_stats(ac)
        log_w = ops.log_importance_weights(xc, outc, lpc, lqc, check_finite=False)
        r = mc.LogMeanExp().update(log_w[:, :10]).update(log_w[:, 10:]).result()
    s.synchronize()
    assert_stats_match(stats_np(stats), reference.logmeanexp_stats(a), dtype)
    x, out, _, lp, lq = problem
    want = reference.log_importance_weights(x, out, lp, lq)
    np.testing.assert_allclose(to_np(log_w), want, rtol=RTOL[dtype] * 5, atol=RTOL[dtype] * 784, err_msg=f"seed={seed}")
    assert_stats_match(stats_np((r.log_likelihood, r.ess, r.std_error)),
                       reference.logmeanexp_stats(to_np(log_w).astype(np.float64)), dtype)


def test_mixed_devices_name_the_argument(rng, seed):
    x, out, _, lp, lq = random_decoder_problem(rng, 2, 3, 4, "bernoulli", False, "float64")
    xc, outc, lpc, lqc = cuda(x, out, lp, lq)
    for name, host in (("decoder_out", torch.from_numpy(out)), ("log_prior", lp), ("log_proposal", lq)):
        args = {"decoder_out": outc, "log_prior": lpc, "log_proposal": lqc, name: host}
        with pytest.raises(ValueError, match=rf"\b{name}\b.*cuda"):
            ops.log_importance_weights(xc, args["decoder_out"], args["log_prior"], args["log_proposal"])
    with pytest.raises(ValueError, match=r"\bdecoder_out\b"):
        ops.log_importance_weights(x, outc, lp, lq)  # numpy x, CUDA decoder_out
    with pytest.raises(ValueError, match=r"\bchunk\b.*numpy"):
        mc.LogMeanExp().update(lpc).update(lp)
    with pytest.raises(ValueError, match=r"\bchunk\b.*cuda"):
        mc.LogMeanExp().update(lp).update(lpc)
    with pytest.raises(ValueError, match="log_prior"):
        ops.log_importance_weights(xc, outc, lpc[:, :2], lqc)


# --------------------------------------------------------------------------- torch op
def test_torch_logmeanexp_opcheck_and_gradcheck(rng):
    check_torch_logmeanexp_op(torch.from_numpy(rng.normal(size=(4, 7))).cuda().requires_grad_())


def test_torch_logmeanexp_all_minus_inf_row_has_zero_gradient(rng):
    check_all_minus_inf_row_has_zero_gradient(torch.from_numpy(rng.normal(size=(3, 1500))).cuda())


# --------------------------------------------------------------------------- genfast.mc on CUDA
class OnCuda:
    """A model of test_mc whose encode/decode return CUDA tensors (computed on the CPU)."""

    def __init__(self, model):
        self.model, self.likelihood, self.latent_dim = model, model.likelihood, model.latent_dim
        self.variance = model.variance

    def encode(self, x):
        return tuple(t.cuda() for t in self.model.encode(to_np(x)))

    def decode(self, z):
        return self.model.decode(z.cpu())[0].cuda(), None


def test_exact_posterior_gives_zero_variance_on_cuda(rng, seed):
    model = LinearGaussian(rng)
    x = model.decode(torch.randn(4, 3, dtype=torch.float64))[0].numpy() + rng.normal(size=(4, 6))
    gen = torch.Generator("cuda").manual_seed(seed)
    r = mc.log_likelihood(OnCuda(model), x, n_samples=50, proposal="posterior", chunk_size=16, generator=gen)
    check_kind("cuda", r.log_likelihood, "float64", (4,), seed=seed, what="log_likelihood")
    np.testing.assert_allclose(to_np(r.log_likelihood), model.exact_log_px(x), rtol=1e-10, err_msg=f"seed={seed}")
    np.testing.assert_allclose(to_np(r.ess), 50.0, rtol=1e-9, err_msg=f"seed={seed}")
    assert (to_np(r.std_error) < 1e-6).all(), f"seed={seed}"


@pytest.mark.parametrize("proposal", ["posterior", "prior"])
def test_vae_on_cuda_agrees_with_cpu(seed, proposal):
    model = genfast.VAE(8, 2, hidden=(16,), random_state=seed % 1000, device="cuda")
    cpu_model = copy.deepcopy(model).to("cpu")
    x = (torch.rand(3, 8, generator=torch.Generator().manual_seed(seed)) < 0.5).float()
    on_gpu = mc.log_likelihood(model, x, 3000, proposal, chunk_size=1024,
                               generator=torch.Generator("cuda").manual_seed(seed))
    on_cpu = mc.log_likelihood(cpu_model, x, 3000, proposal, chunk_size=1024,
                               generator=torch.Generator().manual_seed(seed))
    check_kind("cuda", on_gpu.log_likelihood, "float32", (3,), seed=seed, what="VAE log_likelihood",
               device=model.device)
    diff = (on_gpu.log_likelihood.cpu() - on_cpu.log_likelihood).abs()
    assert (diff < 5 * (on_gpu.std_error.cpu() + on_cpu.std_error) + 1e-3).all(), (diff, seed)
    assert ((on_gpu.ess >= 1) & (on_gpu.ess <= 3000 * (1 + 1e-5))).all(), f"seed={seed}"
