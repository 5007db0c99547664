"""CUDA-only behaviour of the k-means kernels (genfast._cuda) and of KMeans on CUDA.

The kernel-vs-reference tests (awkward and batched shapes, float32/float64, results on the
input's device with the input's dtype, tie-breaking, inputs untouched, non-contiguous
inputs) run on CUDA tensors as the "cuda" kind of tests/test_kmeans_ops.py. This file holds
what is not a kind parameter: CUDA vs CPU agreement, inputs on a non-current device, the
current-stream contract, every output written (raw-pointer _cuda API with poisoned outputs
and workspace), run-to-run determinism, mixed-device validation, and KMeans(device='cuda')
parity with device='cpu'.

Every test is marked `gpu`: conftest.py skips them unless torch is importable, torch sees a
CUDA device and genfast's _cuda module is usable (genfast._backend.cuda_status()).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    WRITE_ASSIGN_SHAPES,
    WRITE_UPDATE_SHAPES,
    as_kind,
    assert_assign_matches,
    assert_update_matches,
    random_labels,
    random_problem,
    random_update_problem,
    random_weights,
    to_np,
)

import genfast
from genfast import ops

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu

DTYPES = ["float32", "float64"]


def cuda(*arrays, device=None):
    """The arrays as torch tensors on `device` (default: the current CUDA device)."""
    return as_kind("cuda", *arrays, device=device)


# =========================================================================== CUDA vs CPU, devices


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_agrees_with_cpu(dtype, rng, seed):
    X, C = random_problem(rng, (3, 2000, 50, 12), dtype)
    cl, cd = ops.kmeans_assign(X, C)
    gl, gd = ops.kmeans_assign(*cuda(X, C))
    assert_assign_matches(X, C, gl, gd, seed=seed, context="cuda vs reference")
    same = to_np(gl) == cl
    assert same.mean() > 0.999, f"cpu and cuda labels disagree on {(~same).sum()} points; seed={seed}"
    np.testing.assert_allclose(to_np(gd)[same], cd[same], rtol=1e-5 if dtype == "float32" else 1e-12,
                               err_msg=f"seed={seed}")


def test_cuda_results_on_input_device(rng, seed):
    """Inputs on another GPU than the current one: outputs and the work stay on that GPU."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    other = torch.device("cuda", (torch.cuda.current_device() + 1) % torch.cuda.device_count())
    X, C = random_problem(rng, (None, 500, 20, 6), "float32")
    Xc, Cc = cuda(X, C, device=other)
    labels, sq_dist = ops.kmeans_assign(Xc, Cc)
    assert labels.device == other and sq_dist.device == other, f"seed={seed}"
    assert_assign_matches(X, C, labels, sq_dist, seed=seed)
    means, wsum = ops.kmeans_update(Xc, labels, 20)
    assert means.device == other and wsum.device == other, f"seed={seed}"
    assert_update_matches(X, to_np(labels), 20, None, means, wsum, seed=seed, return_means=True)


# =========================================================================== streams


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_runs_on_current_stream(dtype, rng, seed):
    """Inputs written on a side stream just before the call (after a long sleep on that
    stream): correct results after s.synchronize() mean the kernels were queued behind the
    write on the current stream, not on another one."""
    B, N, K, D = 2, 20_000, 40, 16
    X, C = random_problem(rng, (B, N, K, D), dtype)
    labels_np = random_labels(rng, B, N, K)
    Xsrc, Csrc, lsrc = cuda(X, C, labels_np)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        Xc = torch.zeros_like(Xsrc)
        Cc = torch.zeros_like(Csrc)
        lc = torch.zeros_like(lsrc)
        if hasattr(torch.cuda, "_sleep"):
            torch.cuda._sleep(50_000_000)  # keep s busy so a kernel on another stream would read zeros
        Xc.copy_(Xsrc)
        Cc.copy_(Csrc)
        lc.copy_(lsrc)
        labels, sq_dist = ops.kmeans_assign(Xc, Cc)
        sums, wsum = ops.kmeans_update(Xc, lc, K, return_means=False)
        step = ops.kmeans_lloyd_step(Xc, Cc, return_means=False)
    s.synchronize()
    assert_assign_matches(X, C, labels, sq_dist, seed=seed, context="side stream")
    assert_update_matches(X, labels_np, K, None, sums, wsum, seed=seed, return_means=False, context="side stream")
    assert torch.equal(step[0], labels) and torch.equal(step[1], sq_dist), f"seed={seed}"


# =========================================================================== raw-pointer API


def _raw_assign(Xc, Cc, labels, sq_dist):
    cu = genfast._backend.require_cuda()
    B, N, D = Xc.shape
    K = Cc.shape[1]
    dtype = str(Xc.dtype).replace("torch.", "")
    device, stream = genfast._backend.cuda_launch_args(Xc)
    cu.kmeans_assign(Xc.data_ptr(), Cc.data_ptr(), labels.data_ptr(), sq_dist.data_ptr(),
                     B, N, K, D, dtype, device, stream)


def _raw_update(Xc, lc, wc, sums, wsum, workspace_fill=None):
    cu = genfast._backend.require_cuda()
    B, N, D = Xc.shape
    K = sums.shape[1]
    dtype = str(Xc.dtype).replace("torch.", "")
    device, stream = genfast._backend.cuda_launch_args(Xc)
    nbytes = cu.kmeans_update_workspace_bytes(B, N, K, device=device)
    workspace = torch.full((max(int(nbytes), 1),), 0xFF if workspace_fill is None else workspace_fill,
                           dtype=torch.uint8, device=Xc.device)  # poisoned scratch
    cu.kmeans_update(Xc.data_ptr(), lc.data_ptr(), 0 if wc is None else wc.data_ptr(),
                     sums.data_ptr(), wsum.data_ptr(), workspace.data_ptr(), int(nbytes),
                     B, N, K, D, dtype, device, stream)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", WRITE_ASSIGN_SHAPES.values(), ids=WRITE_ASSIGN_SHAPES.keys())
def test_cuda_raw_assign_writes_every_output(shape, dtype, rng, seed):
    B, N, K, D = shape
    X, C = random_problem(rng, shape, dtype)
    Xc, Cc = cuda(X, C)
    labels = torch.full((B, N), -7, dtype=torch.int64, device=Xc.device)
    sq_dist = torch.full((B, N), float("nan"), dtype=getattr(torch, dtype), device=Xc.device)
    _raw_assign(Xc, Cc, labels, sq_dist)
    torch.cuda.synchronize()
    assert not (labels == -7).any(), f"labels left unwritten; seed={seed}"
    assert not torch.isnan(sq_dist).any(), f"sq_dist left unwritten; seed={seed}"
    assert_assign_matches(X, C, labels, sq_dist, seed=seed, context="raw cuda")


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", WRITE_UPDATE_SHAPES.values(), ids=WRITE_UPDATE_SHAPES.keys())
def test_cuda_raw_update_writes_every_output(shape, dtype, weighted, rng, seed):
    B, _, K, D = shape
    X, labels, w = random_update_problem(rng, shape, "BN" if weighted else None, dtype)
    Xc, lc, wc = cuda(X, labels, w)
    sums = torch.full((B, K, D), float("nan"), dtype=getattr(torch, dtype), device=Xc.device)
    wsum = torch.full((B, K), float("nan"), dtype=getattr(torch, dtype), device=Xc.device)
    _raw_update(Xc, lc, wc, sums, wsum)
    torch.cuda.synchronize()
    assert not torch.isnan(sums).any(), f"sums left unwritten; seed={seed}"
    assert not torch.isnan(wsum).any(), f"wsum left unwritten; seed={seed}"
    assert_update_matches(X, labels, K, w, sums, wsum, seed=seed, return_means=False, context="raw cuda")


# =========================================================================== determinism, validation


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_run_to_run_deterministic(dtype, rng, seed):
    """Reductions are deterministic: the same call twice gives bitwise the same results."""
    B, N, K, D = 2, 50_000, 30, 8
    X, C = random_problem(rng, (B, N, K, D), dtype)
    w = random_weights(rng, B, N, "BN", dtype)
    Xc, Cc, wc = cuda(X, C, w)
    first = ops.kmeans_lloyd_step(Xc, Cc, wc, return_means=False)
    for _ in range(2):
        again = ops.kmeans_lloyd_step(Xc, Cc, wc, return_means=False)
        for a, b in zip(first, again):
            assert torch.equal(a, b), f"seed={seed}"


def test_cuda_validation(rng, seed):
    X, C = random_problem(rng, (None, 10, 4, 3), "float64")
    Xc, Cc = cuda(X, C)
    with pytest.raises(ValueError, match=r"\bC\b"):
        ops.kmeans_assign(Xc, torch.from_numpy(C))  # C on the CPU, X on the GPU
    with pytest.raises(ValueError, match=r"\bC\b"):
        ops.kmeans_assign(Xc, C)  # numpy C
    with pytest.raises(ValueError, match=r"\bX\b"):
        ops.kmeans_assign(torch.full_like(Xc, float("nan")), Cc)
    with pytest.raises(ValueError, match=r"\bC\b"):
        ops.kmeans_assign(Xc, Cc[:, :2])
    labels = torch.zeros(10, dtype=torch.int64, device=Xc.device)
    with pytest.raises(ValueError, match=r"\blabels\b"):
        ops.kmeans_update(Xc, labels + 4, 4)
    with pytest.raises(ValueError, match=r"\blabels\b"):
        ops.kmeans_update(Xc, labels.cpu(), 4)
    with pytest.raises(ValueError, match=r"\bsample_weight\b"):
        ops.kmeans_update(Xc, labels, 4, -torch.ones(10, dtype=torch.float64, device=Xc.device))


# =========================================================================== KMeans on CUDA


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_kmeans_cuda_parity_with_cpu_from_init(dtype, weighted, rng, seed):
    from sklearn.datasets import make_blobs

    X, _ = make_blobs(n_samples=3000, n_features=6, centers=8, cluster_std=1.5, random_state=int(rng.integers(2**31)))
    X = X.astype(dtype)
    init = X[rng.choice(len(X), 8, replace=False)].copy()
    sw = rng.uniform(0.2, 2.0, size=len(X)) if weighted else None
    cpu = genfast.KMeans(8, init=init, n_init=1, device="cpu").fit(X, sample_weight=sw)
    for Xin, device in [(X, "cuda"), (cuda(X)[0], "auto"), (cuda(X)[0], "cuda")]:
        gpu = genfast.KMeans(8, init=init, n_init=1, device=device).fit(Xin, sample_weight=sw)
        msg = f"seed={seed} dtype={dtype} input={type(Xin).__name__} device={device}"
        np.testing.assert_array_equal(to_np(gpu.labels_), cpu.labels_, err_msg=msg)
        np.testing.assert_allclose(gpu.inertia_, cpu.inertia_, rtol=1e-4 if dtype == "float32" else 1e-6, err_msg=msg)
        tol = 1e-4 if dtype == "float32" else 1e-9
        np.testing.assert_allclose(to_np(gpu.cluster_centers_), cpu.cluster_centers_, rtol=tol,
                                   atol=tol * float(np.abs(X).max()), err_msg=msg)
        assert to_np(gpu.cluster_centers_).dtype == np.dtype(dtype), msg
        assert gpu.n_iter_ == cpu.n_iter_, msg


def test_kmeans_cuda_kmeans_plusplus_parity_with_cpu(rng, seed):
    from sklearn.datasets import make_blobs

    X, _ = make_blobs(n_samples=2000, n_features=4, centers=6, random_state=int(rng.integers(2**31)))
    state = int(rng.integers(2**31))
    cpu = genfast.KMeans(6, random_state=state, n_init=2, device="cpu").fit(X)
    gpu = genfast.KMeans(6, random_state=state, n_init=2, device="cuda").fit(X)
    np.testing.assert_array_equal(to_np(gpu.labels_), cpu.labels_, err_msg=f"seed={seed}")
    np.testing.assert_allclose(gpu.inertia_, cpu.inertia_, rtol=1e-6, err_msg=f"seed={seed}")


def test_kmeans_cuda_methods_on_cuda_tensors(rng, seed):
    X, _ = random_problem(rng, (None, 1000, 5, 3), "float32")
    Xc = cuda(X)[0]
    km = genfast.KMeans(5, random_state=int(rng.integers(2**31)), device="cuda").fit(Xc)
    X0 = X.copy()
    labels = km.predict(Xc)
    assert isinstance(labels, torch.Tensor) and labels.device == Xc.device and labels.dtype == torch.int64
    np.testing.assert_array_equal(to_np(labels), to_np(km.labels_), err_msg=f"seed={seed}")
    T = km.transform(Xc)
    assert isinstance(T, torch.Tensor) and T.device == Xc.device and T.dtype == torch.float32
    C = to_np(km.cluster_centers_)
    expected = np.sqrt(((X[:, None, :].astype(np.float64) - C[None]) ** 2).sum(-1))
    np.testing.assert_allclose(to_np(T), expected, rtol=1e-3, atol=1e-3, err_msg=f"seed={seed}")
    np.testing.assert_allclose(km.score(Xc), -km.inertia_, rtol=1e-4, err_msg=f"seed={seed}")
    np.testing.assert_array_equal(to_np(Xc), X0, err_msg=f"X modified; seed={seed}")


@pytest.mark.parametrize("estimator", ["KMeans", "GaussianMixture"])
def test_cuda_out_of_memory_during_fit_is_a_clear_error_and_the_process_stays_usable(estimator, rng, seed):
    """_cuda never allocates: outputs and workspaces come from torch's caching allocator, so an
    out-of-memory during fit is torch's OutOfMemoryError (a RuntimeError saying 'out of
    memory'), raised before any kernel is launched. Afterwards the device still works: a small
    fit on the GPU gives the CPU's result."""
    device = torch.device("cuda", torch.cuda.current_device())
    make = {"KMeans": lambda: genfast.KMeans(n_clusters=8, n_init=1, max_iter=5, random_state=0),
            "GaussianMixture": lambda: genfast.GaussianMixture(4, covariance_type="diag", max_iter=5,
                                                               random_state=0)}[estimator]
    X = torch.from_numpy(rng.standard_normal((2_000_000, 16)).astype(np.float32)).to(device)
    torch.cuda.synchronize(device)
    total = torch.cuda.get_device_properties(device).total_memory
    # Cap the allocator just above what it holds now: the fit's first output does not fit.
    torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_reserved(device) + 2**20) / total, device)
    try:
        with pytest.raises(RuntimeError, match="(?i)out of memory"):
            make().fit(X)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        del X
        torch.cuda.empty_cache()
    from sklearn.datasets import make_blobs

    small, _ = make_blobs(n_samples=3000, n_features=5, centers=4, random_state=int(rng.integers(2**31)))
    on_gpu = make().fit(torch.from_numpy(small).to(device))
    on_cpu = make().fit(small)
    if estimator == "KMeans":
        np.testing.assert_array_equal(to_np(on_gpu.labels_), on_cpu.labels_, err_msg=f"seed={seed}")
    else:
        np.testing.assert_allclose(to_np(on_gpu.means_), on_cpu.means_, rtol=1e-4, atol=1e-4,
                                   err_msg=f"seed={seed}")
