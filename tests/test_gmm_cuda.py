"""The CUDA Gaussian-mixture kernels (genfast._cuda, and genfast.ops on CUDA tensors) against
genfast.reference and the CPU kernels.

The shapes, covariance types, dtypes, random mixtures and tolerances are those of
tests/test_gmm_ops.py, plus shapes that cross the CUDA tilings: the E-step's narrow tiles
(<= 16 factor columns for full/tied, <= 16 components for diag/spherical) and wide ones (64
columns or components per tile), the M-step's 16/32/64-feature scatter tiles and its chunks
of >= 512 points. The raw-pointer API is called with NaN-poisoned outputs and a poisoned
workspace, so an element the kernels do not write fails the comparison.

Every test is marked `gpu`: conftest.py skips them unless torch sees a CUDA device and
genfast's _cuda module can use it.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import as_kind, check_kind, to_np
from test_gmm_ops import COVARIANCE_TYPES, DTYPES, RTOL, SHAPES, random_mixture, rel_err, scatter_shape

from genfast import _backend as be
from genfast import ops, reference

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu

# (N, K, D): SHAPES, and shapes past each CUDA tile boundary.
CUDA_SHAPES = {
    **SHAPES,
    "K17_wide_diag_tile": (300, 17, 5),
    "K70_two_component_tiles": (200, 70, 3),
    "D17_wide_full_tile_D_micro2": (150, 4, 17),
    "D33_micro4": (90, 3, 33),
    "D70_two_column_tiles": (100, 5, 70),
    "D130_K40": (70, 40, 130),
    "chunks": (20_000, 3, 6),
}


def cuda(*arrays):
    return as_kind("cuda", *arrays)


def raw_log_resp(X, weights, means, prec, covariance_type, log_prob, log_resp):
    """genfast._cuda.gmm_log_resp on CUDA tensors, with a workspace of 0xFF bytes."""
    cu = be.require_cuda()
    (N, D), K = X.shape, means.shape[0]
    device, stream = be.cuda_launch_args(X)
    nbytes = cu.gmm_log_resp_workspace_bytes(K)
    workspace = torch.full((nbytes,), 0xFF, dtype=torch.uint8, device=X.device)
    cu.gmm_log_resp(X.data_ptr(), weights.data_ptr(), means.data_ptr(), prec.data_ptr(), covariance_type,
                    log_prob.data_ptr(), 0 if log_resp is None else log_resp.data_ptr(), workspace.data_ptr(),
                    nbytes, N, K, D, be.dtype_name(X), device, stream)


def raw_suff_stats(X, resp, log, covariance_type, nk, sums, scatter):
    """genfast._cuda.gmm_suff_stats on CUDA tensors, with a workspace of 0xFF bytes."""
    cu = be.require_cuda()
    (N, D), K = X.shape, resp.shape[1]
    device, stream = be.cuda_launch_args(X)
    nbytes = cu.gmm_suff_stats_workspace_bytes(N, K, D, covariance_type)
    workspace = torch.full((nbytes,), 0xFF, dtype=torch.uint8, device=X.device)
    cu.gmm_suff_stats(X.data_ptr(), resp.data_ptr(), log, covariance_type, nk.data_ptr(), sums.data_ptr(),
                      scatter.data_ptr(), workspace.data_ptr(), nbytes, N, K, D, be.dtype_name(X), device, stream)


def poisoned(shape, dtype):
    return torch.full(shape, float("nan"), dtype=getattr(torch, dtype), device=torch.device("cuda", torch.cuda.current_device()))


# =========================================================================== against the reference


@pytest.mark.parametrize("shape", CUDA_SHAPES.values(), ids=CUDA_SHAPES.keys())
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_kernels_match_reference_and_write_every_output(rng, seed, shape, covariance_type, dtype):
    N, K, D = shape
    weights, means, prec = (a.astype(dtype) for a in random_mixture(rng, K, D, covariance_type))
    X = rng.normal(scale=1.5, size=(N, D)).astype(dtype)
    Xc, wc, mc, pc = cuda(X, weights, means, prec)
    msg = f"seed={seed} shape={shape} {covariance_type} {dtype}"

    log_prob, log_resp = poisoned((N,), dtype), poisoned((N, K), dtype)
    raw_log_resp(Xc, wc, mc, pc, covariance_type, log_prob, log_resp)
    ref_lp, ref_lr = reference.gmm_log_resp(X, weights, means, prec, covariance_type)
    assert rel_err(to_np(log_prob), ref_lp) < RTOL[dtype], f"log_prob; {msg}"
    assert np.max(np.abs(to_np(log_resp) - ref_lr)) < 1e4 * RTOL[dtype], f"log_resp; {msg}"
    # Without log_resp: the same pass, the same bits.
    alone = poisoned((N,), dtype)
    raw_log_resp(Xc, wc, mc, pc, covariance_type, alone, None)
    assert torch.equal(alone, log_prob), f"log_prob alone; {msg}"

    resp = np.exp(ref_lr).astype(dtype)
    ref = reference.gmm_suff_stats(X, resp, covariance_type)
    for log, r in ((False, resp), (True, ref_lr.astype(dtype))):
        nk, sums = poisoned((K,), dtype), poisoned((K, D), dtype)
        scatter = poisoned(scatter_shape(covariance_type, K, D), dtype)
        raw_suff_stats(Xc, *cuda(r), log, covariance_type, nk, sums, scatter)
        for name, got, want in zip(("nk", "sums", "scatter"), (nk, sums, scatter), ref):
            assert rel_err(to_np(got), want) < RTOL[dtype], f"{name} log={log}; {msg}"
        if covariance_type in ("full", "tied"):
            s = to_np(scatter)
            assert np.array_equal(s, np.swapaxes(s, -1, -2)), f"scatter not exactly symmetric; {msg}"


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_ops_return_cuda_tensors_and_agree_with_cpu(rng, seed, covariance_type, dtype):
    N, K, D = 1000, 6, 5
    weights, means, prec = (a.astype(dtype) for a in random_mixture(rng, K, D, covariance_type))
    X = rng.normal(size=(N, D)).astype(dtype)
    log_prob, log_resp = ops.gmm_log_resp(*cuda(X, weights, means, prec), covariance_type, return_log_resp=True)
    nk, sums, scatter = ops.gmm_suff_stats(cuda(X)[0], log_resp, covariance_type, log=True)
    for out, shape, what in ((log_prob, (N,), "log_prob"), (log_resp, (N, K), "log_resp"), (nk, (K,), "nk"),
                             (sums, (K, D), "sums"), (scatter, scatter_shape(covariance_type, K, D), "scatter")):
        check_kind("cuda", out, dtype, shape, seed=seed, what=what)
    cpu_lp, cpu_lr = ops.gmm_log_resp(X, weights, means, prec, covariance_type, return_log_resp=True)
    cpu_stats = ops.gmm_suff_stats(X, to_np(log_resp), covariance_type, log=True)
    msg = f"seed={seed} {covariance_type} {dtype}"
    assert rel_err(to_np(log_prob), cpu_lp) < RTOL[dtype], msg
    assert np.max(np.abs(to_np(log_resp) - cpu_lr)) < 1e4 * RTOL[dtype], msg
    for name, got, want in zip(("nk", "sums", "scatter"), (nk, sums, scatter), cpu_stats):
        assert rel_err(to_np(got), want) < RTOL[dtype], f"{name}; {msg}"


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_em_step_matches_reference(rng, seed, covariance_type, dtype):
    # On CUDA tensors gmm_em_step is gmm_log_resp + gmm_suff_stats on the device.
    N, K, D = 2000, 5, 7
    weights, means, prec = (a.astype(dtype) for a in random_mixture(rng, K, D, covariance_type))
    X = rng.normal(size=(N, D)).astype(dtype)
    got = ops.gmm_em_step(*cuda(X, weights, means, prec), covariance_type)
    want = reference.gmm_em_step(X, weights, means, prec, covariance_type)
    for name, out, ref in zip(("log_prob", "nk", "sums", "scatter"), got, want):
        check_kind("cuda", out, dtype, ref.shape, seed=seed, what=name)
        assert rel_err(to_np(out), ref) < RTOL[dtype], f"{name} seed={seed} {covariance_type} {dtype}"


# =========================================================================== determinism, edge cases


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_run_to_run_deterministic(rng, seed, covariance_type, dtype):
    """Fixed chunks of points added in a fixed order: the same call twice gives the same bits."""
    N, K, D = 30_000, 20, 12
    weights, means, prec = (a.astype(dtype) for a in random_mixture(rng, K, D, covariance_type))
    args = cuda(rng.normal(size=(N, D)).astype(dtype), weights, means, prec)
    runs = []
    for _ in range(3):
        log_prob, log_resp = ops.gmm_log_resp(*args, covariance_type, return_log_resp=True)
        runs.append((log_prob, log_resp, *ops.gmm_suff_stats(args[0], log_resp, covariance_type, log=True)))
    for again in runs[1:]:
        for a, b in zip(runs[0], again):
            assert torch.equal(a, b), f"seed={seed} {covariance_type} {dtype}"


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_cuda_zero_probability_gives_minus_inf_never_nan(rng, seed, covariance_type):
    K, D = 20, 3  # more than 16 components: the diag/spherical lanes merge partial sums
    _, means, prec = random_mixture(rng, K, D, covariance_type)
    X = rng.normal(size=(300, D))
    Xc, mc, pc = cuda(X, means, prec)
    log_prob, log_resp = ops.gmm_log_resp(Xc, *cuda(np.zeros(K)), mc, pc, covariance_type, return_log_resp=True)
    assert bool((log_prob == -np.inf).all()) and bool((log_resp == -np.inf).all()), f"seed={seed}"
    weights = np.full(K, 1.0 / (K - 2))
    weights[[1, 17]] = 0
    log_prob, log_resp = ops.gmm_log_resp(Xc, *cuda(weights), mc, pc, covariance_type, return_log_resp=True)
    lr = to_np(log_resp)
    assert np.all(np.isfinite(to_np(log_prob))) and np.all(lr[:, [1, 17]] == -np.inf), f"seed={seed}"
    assert np.all(np.isfinite(np.delete(lr, [1, 17], axis=1))), f"seed={seed}"


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_cuda_float32_far_from_origin_keeps_positive_variances(rng, seed, covariance_type):
    X = (1e4 + 0.01 * rng.normal(size=(20_000, 3))).astype(np.float32)
    resp = rng.dirichlet(np.ones(2), size=len(X)).astype(np.float32)
    _, _, scatter = ops.gmm_suff_stats(*cuda(X, resp), covariance_type)
    _, _, ref = reference.gmm_suff_stats(X, resp, covariance_type)
    scatter = to_np(scatter)
    variances = np.diagonal(scatter, axis1=-2, axis2=-1) if covariance_type in ("full", "tied") else scatter
    assert np.all(variances > 0), f"seed={seed}"
    assert rel_err(scatter, ref) < 1e-4, f"seed={seed}"


def test_cuda_empty_component_has_zero_mean_and_scatter(rng, seed):
    X = rng.normal(size=(600, 3))
    resp = np.zeros((600, 2))
    resp[:, 0] = 1
    nk, sums, scatter = (to_np(a) for a in ops.gmm_suff_stats(*cuda(X, resp), "full"))
    assert nk[1] == 0 and np.all(sums[1] == 0) and np.all(scatter[1] == 0), f"seed={seed}"
    assert np.all(np.isfinite(scatter)), f"seed={seed}"


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_no_points(rng, covariance_type, dtype):
    """N = 0 (the raw API; the ops reject an empty X): zero statistics, and the E-step still
    checks the parameters."""
    K, D = 3, 4
    weights, means, prec = (a.astype(dtype) for a in random_mixture(rng, K, D, covariance_type))
    X = torch.empty((0, D), dtype=getattr(torch, dtype), device=torch.device("cuda", torch.cuda.current_device()))
    resp = X.new_empty((0, K))
    nk, sums, scatter = poisoned((K,), dtype), poisoned((K, D), dtype), poisoned(scatter_shape(covariance_type, K, D), dtype)
    raw_suff_stats(X, resp, False, covariance_type, nk, sums, scatter)
    for out in (nk, sums, scatter):
        assert bool((out == 0).all())
    wc, mc, pc = cuda(weights, means, prec)
    raw_log_resp(X, wc, mc, pc, covariance_type, X.new_empty((0,)), X.new_empty((0, K)))
    with pytest.raises(ValueError, match="weights"):
        raw_log_resp(X, -wc, mc, pc, covariance_type, X.new_empty((0,)), None)


# =========================================================================== errors


def _bad_parameter_cases(rng):
    """(name, (weights, means, precisions_cholesky, covariance_type)) with invalid weights or
    factors, several with more than one fault, so that which one is reported matters."""
    K, D = 4, 5
    cases = {}
    for cov in COVARIANCE_TYPES:
        w, mu, P = random_mixture(rng, K, D, cov)
        bad_w = w.copy()
        bad_w[2] = -0.1
        cases[f"{cov}_negative_weight"] = (bad_w, mu, P, cov)
        nan_w = w.copy()
        nan_w[1] = np.nan
        cases[f"{cov}_nan_weight"] = (nan_w, mu, P, cov)
        if cov in ("full", "tied"):
            def factor(A, k):  # the factor of component k (tied: the shared one)
                return A[k] if cov == "full" else A

            lower = P.copy()
            factor(lower, 2)[3, 1] = 0.5
            cases[f"{cov}_not_upper"] = (w, mu, lower, cov)
            bad = P.copy()
            factor(bad, 1)[2, 2] = 0.0
            cases[f"{cov}_zero_diagonal"] = (w, mu, bad, cov)
            # Row 1's lower entry comes before row 3's diagonal in the CPU kernel's order...
            bad = P.copy()
            factor(bad, 1)[3, 3] = -1.0
            factor(bad, 1)[1, 0] = 0.25
            cases[f"{cov}_lower_before_later_diagonal"] = (w, mu, bad, cov)
            # ...and row 3's diagonal before row 3's lower entries.
            row = P.copy()
            factor(row, 1)[3, 3] = -1.0
            factor(row, 1)[3, 0] = 0.25
            cases[f"{cov}_diagonal_before_same_row_lower"] = (w, mu, row, cov)
        else:
            bad = P.copy()
            bad[1] = -bad[1]
            cases[f"{cov}_nonpositive"] = (w, mu, bad, cov)
        # Component 1's factor before component 3's weight; component 1's weight before its factor.
        later_w, same_w = w.copy(), w.copy()
        later_w[3] = -1.0
        same_w[1] = -1.0
        cases[f"{cov}_factor_before_later_weight"] = (later_w, mu, bad, cov)
        cases[f"{cov}_weight_before_own_factor"] = (same_w, mu, bad, cov)
    return cases


@pytest.mark.parametrize("case", list(_bad_parameter_cases(np.random.default_rng(0))))
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_bad_parameters_raise_the_cpu_error_before_writing(rng, case, dtype):
    weights, means, prec, cov = (a.astype(dtype) if isinstance(a, np.ndarray) else a
                                 for a in _bad_parameter_cases(rng)[case])
    X = rng.normal(size=(50, means.shape[1])).astype(dtype)
    with pytest.raises(ValueError) as cpu:
        ops.gmm_log_resp(X, weights, means, prec, cov, check_finite=False)
    with pytest.raises(ValueError) as gpu:
        ops.gmm_log_resp(*cuda(X, weights, means, prec), cov, check_finite=False)
    assert str(gpu.value) == str(cpu.value)
    # The raw API raises before it writes an output.
    log_prob, log_resp = poisoned((50,), dtype), poisoned((50, means.shape[0]), dtype)
    with pytest.raises(ValueError):
        raw_log_resp(*cuda(X, weights, means, prec), cov, log_prob, log_resp)
    assert bool(torch.isnan(log_prob).all()) and bool(torch.isnan(log_resp).all())


def test_cuda_validation_names_the_argument(rng):
    w, mu, P = random_mixture(rng, 3, 2, "full")
    X = rng.normal(size=(10, 2))
    Xc, wc, mc, pc = cuda(X, w, mu, P)
    with pytest.raises(ValueError, match=r"\bweights\b"):
        ops.gmm_log_resp(Xc, w, mc, pc, "full")  # numpy weights, CUDA X
    with pytest.raises(ValueError, match=r"\bprecisions_cholesky\b"):
        ops.gmm_log_resp(Xc, wc, mc, pc.cpu(), "full")
    with pytest.raises(ValueError, match=r"\bresp\b"):
        ops.gmm_suff_stats(Xc, torch.from_numpy(np.ones((10, 3))), "full")
    with pytest.raises(ValueError, match=r"\bresp\b"):
        ops.gmm_suff_stats(Xc, -torch.ones((10, 3), dtype=torch.float64, device=Xc.device), "full")


# =========================================================================== streams


def test_cuda_gmm_runs_on_current_stream(rng, seed):
    """Inputs written on a side stream just before the calls (after a long sleep on it):
    correct results mean the kernels were queued behind the writes on that stream."""
    N, K, D = 20_000, 8, 6
    weights, means, prec = random_mixture(rng, K, D, "full")
    X = rng.normal(size=(N, D))
    sources = cuda(X, weights, means, prec)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        copies = [torch.zeros_like(a) for a in sources]
        if hasattr(torch.cuda, "_sleep"):
            torch.cuda._sleep(50_000_000)
        for dst, src in zip(copies, sources):
            dst.copy_(src)
        log_prob, log_resp = ops.gmm_log_resp(*copies, "full", return_log_resp=True, check_finite=False)
        stats = ops.gmm_suff_stats(copies[0], log_resp, "full", log=True, check_finite=False)
    side.synchronize()
    ref_lp, ref_lr = reference.gmm_log_resp(X, weights, means, prec, "full")
    assert rel_err(to_np(log_prob), ref_lp) < RTOL["float64"], f"seed={seed}"
    for got, want in zip(stats, reference.gmm_suff_stats(X, np.exp(ref_lr), "full")):
        assert rel_err(to_np(got), want) < RTOL["float64"], f"seed={seed}"
