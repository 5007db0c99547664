"""The k-means kernels on torch CUDA tensors (genfast._cuda), against genfast.reference.

Every test is marked `gpu`: conftest.py skips them unless torch is importable, torch sees a
CUDA device and genfast's _cuda module is usable (genfast._backend.cuda_status()).

Covers: ops on CUDA tensors (awkward and batched shapes, float32/float64, results on the
input's device with the input's dtype), the current-stream contract, every output written
(raw-pointer _cuda API with poisoned outputs), tie-breaking, run-to-run determinism, inputs
untouched, validation, and KMeans(device='cuda') parity with device='cpu'.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_assign_matches, assert_update_matches, random_problem, to_np

import genfast
from genfast import ops

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu

DTYPES = ["float32", "float64"]

SHAPES = {
    "N1_K1_D1": (None, 1, 1, 1),
    "N1": (None, 1, 7, 3),
    "K1": (None, 50, 1, 5),
    "K=N": (None, 33, 33, 7),
    "N257_K33_D7": (None, 257, 33, 7),
    "K31": (None, 100, 31, 4),
    "K32": (None, 100, 32, 4),
    "K65": (None, 100, 65, 9),
    "D1": (None, 300, 17, 1),
    "D130": (None, 70, 40, 130),
    "D130_K400": (None, 40, 400, 130),
    "N5000_K70": (None, 5000, 70, 16),
    "B3": (3, 50, 9, 7),
    "B2_N257_K65": (2, 257, 65, 3),
    "B4_N1_K1_D1": (4, 1, 1, 1),
}


def dev():
    return torch.device("cuda", torch.cuda.current_device())


def cuda(*arrays, device=None):
    device = device or dev()
    return tuple(None if a is None else torch.from_numpy(np.array(a, copy=True)).to(device) for a in arrays)


def check_cuda_out(out, dtype, shape, device, *, seed, what):
    msg = f"{what}: seed={seed}"
    assert isinstance(out, torch.Tensor), f"{msg}: {type(out)}"
    assert out.device == device, f"{msg}: on {out.device}, input on {device}"
    assert out.dtype == getattr(torch, dtype), f"{msg}: dtype {out.dtype}"
    assert tuple(out.shape) == tuple(shape), f"{msg}: shape {tuple(out.shape)} != {shape}"


def random_labels(rng, B, N, K):
    lead = () if B is None else (B,)
    if K > 2:
        used = rng.choice(K, size=K - K // 3, replace=False)
        return used[rng.integers(0, len(used), size=lead + (N,))].astype(np.int64)
    return rng.integers(0, K, size=lead + (N,)).astype(np.int64)


def random_weights(rng, B, N, mode, dtype):
    if mode is None:
        return None
    shape = (N,) if mode == "N" else (B, N)
    w = rng.uniform(0.0, 3.0, size=shape)
    w[rng.random(shape) < 0.1] = 0.0
    return w.astype(dtype)


# =========================================================================== ops on CUDA tensors


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_cuda_assign_matches_reference(shape, dtype, rng, seed):
    X, C = random_problem(rng, shape, dtype)
    Xc, Cc = cuda(X, C)
    labels, sq_dist = ops.kmeans_assign(Xc, Cc)
    check_cuda_out(labels, "int64", X.shape[:-1], Xc.device, seed=seed, what="labels")
    check_cuda_out(sq_dist, dtype, X.shape[:-1], Xc.device, seed=seed, what="sq_dist")
    assert_assign_matches(X, C, labels, sq_dist, seed=seed, context="cuda")


def _update_params():
    for name, shape in SHAPES.items():
        for mode in [None, "N"] + (["BN"] if shape[0] is not None else []):
            yield pytest.param(shape, mode, id=f"{name}-w{mode}")


@pytest.mark.parametrize("return_means", [True, False], ids=["means", "sums"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,wmode", list(_update_params()))
def test_cuda_update_matches_reference(shape, wmode, dtype, return_means, rng, seed):
    B, N, K, D = shape
    X, _ = random_problem(rng, shape, dtype)
    labels = random_labels(rng, B, N, K)
    w = random_weights(rng, B, N, wmode, dtype)
    Xc, lc, wc = cuda(X, labels, w)
    out, wsum = ops.kmeans_update(Xc, lc, K, wc, return_means=return_means)
    lead = () if B is None else (B,)
    check_cuda_out(out, dtype, lead + (K, D), Xc.device, seed=seed, what="centres/sums")
    check_cuda_out(wsum, dtype, lead + (K,), Xc.device, seed=seed, what="weights")
    w_ref = None if w is None else (np.broadcast_to(w, labels.shape) if B is not None else w)
    assert_update_matches(X, labels, K, w_ref, out, wsum, seed=seed, return_means=return_means, context="cuda")


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_update_many_points(dtype, rng, seed):
    """Enough points for many thread blocks per cluster (and some empty clusters)."""
    B, N, K, D = 2, 70_000, 37, 5
    X, _ = random_problem(rng, (B, N, K, D), dtype)
    labels = random_labels(rng, B, N, K)
    w = random_weights(rng, B, N, "BN", dtype)
    out, wsum = ops.kmeans_update(*cuda(X, labels), K, cuda(w)[0], return_means=False)
    assert_update_matches(X, labels, K, w, out, wsum, seed=seed, return_means=False, context="cuda")


@pytest.mark.parametrize("wmode", [None, "N", "BN"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_lloyd_step(dtype, wmode, rng, seed):
    B, N, K, D = 2, 3000, 65, 7
    X, C = random_problem(rng, (B, N, K, D), dtype)
    w = random_weights(rng, B, N, wmode, dtype)
    Xc, Cc, wc = cuda(X, C, w)
    labels, sq_dist, sums, wsum = ops.kmeans_lloyd_step(Xc, Cc, wc, return_means=False)
    for t in (labels, sq_dist, sums, wsum):
        assert t.device == Xc.device, f"seed={seed}"
    l2, d2 = ops.kmeans_assign(Xc, Cc)
    s2, w2 = ops.kmeans_update(Xc, l2, K, wc, return_means=False)
    for name, a, b in [("labels", labels, l2), ("sq_dist", sq_dist, d2), ("sums", sums, s2), ("wsum", wsum, w2)]:
        assert torch.equal(a, b), f"{name}: lloyd_step differs from assign + update; seed={seed}"
    assert_assign_matches(X, C, labels, sq_dist, seed=seed, context="cuda")
    w_ref = None if w is None else np.broadcast_to(w, (B, N))
    assert_update_matches(X, to_np(labels), K, w_ref, sums, wsum, seed=seed, return_means=False, context="cuda")


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


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_batched_equals_per_problem(dtype, rng, seed):
    B, N, K, D = 4, 600, 33, 9
    X, C = random_problem(rng, (B, N, K, D), dtype)
    labels = random_labels(rng, B, N, K)
    Xc, Cc, lc = cuda(X, C, labels)
    bl, bd = ops.kmeans_assign(Xc, Cc)
    bs, bw = ops.kmeans_update(Xc, lc, K, return_means=False)
    for b in range(B):
        l1, d1 = ops.kmeans_assign(Xc[b], Cc[b])
        s1, w1 = ops.kmeans_update(Xc[b], lc[b], K, return_means=False)
        assert torch.equal(bl[b], l1) and torch.equal(bd[b], d1), f"assign problem {b}; seed={seed}"
        assert torch.equal(bs[b], s1) and torch.equal(bw[b], w1), f"update problem {b}; seed={seed}"


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
    nbytes = cu.kmeans_update_workspace_bytes(B, N, K)
    workspace = torch.full((max(int(nbytes), 1),), 0xFF if workspace_fill is None else workspace_fill,
                           dtype=torch.uint8, device=Xc.device)  # poisoned scratch
    cu.kmeans_update(Xc.data_ptr(), lc.data_ptr(), 0 if wc is None else wc.data_ptr(),
                     sums.data_ptr(), wsum.data_ptr(), workspace.data_ptr(), int(nbytes),
                     B, N, K, D, dtype, device, stream)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 257, 33, 7), (3, 100, 65, 130), (2, 9, 400, 130), (1, 5000, 1, 1)],
                         ids=["N1_K1_D1", "N257_K33", "B3_K65_D130", "B2_K400_D130", "K1_D1"])
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
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 257, 33, 7), (3, 50, 9, 130), (2, 20_000, 5, 3), (1, 10, 40, 2)],
                         ids=["N1_K1_D1", "N257_K33", "B3_D130", "B2_N20000", "K40_N10_mostly_empty"])
def test_cuda_raw_update_writes_every_output(shape, dtype, weighted, rng, seed):
    B, N, K, D = shape
    X, _ = random_problem(rng, shape, dtype)
    labels = random_labels(rng, B, N, K)
    w = random_weights(rng, B, N, "BN", dtype) if weighted else None
    Xc, lc, wc = cuda(X, labels, w)
    sums = torch.full((B, K, D), float("nan"), dtype=getattr(torch, dtype), device=Xc.device)
    wsum = torch.full((B, K), float("nan"), dtype=getattr(torch, dtype), device=Xc.device)
    _raw_update(Xc, lc, wc, sums, wsum)
    torch.cuda.synchronize()
    assert not torch.isnan(sums).any(), f"sums left unwritten; seed={seed}"
    assert not torch.isnan(wsum).any(), f"wsum left unwritten; seed={seed}"
    assert_update_matches(X, labels, K, w, sums, wsum, seed=seed, return_means=False, context="raw cuda")


# =========================================================================== ties, determinism


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K,D", [(33, 2), (400, 130)], ids=["K33_D2", "K400_D130"])
def test_cuda_duplicate_centres_lowest_index(K, D, dtype, rng, seed):
    C = rng.standard_normal((K, D))
    groups = [(0, 1), (3, K - 1), (K // 2, K // 2 + 1), (5, K // 2 + 16)]
    if K >= 400:
        groups += [(10, 390), (50, 150, 350)]
    for g in groups:
        C[list(g[1:])] = C[g[0]]
    C = C.astype(dtype)
    first = np.array([np.flatnonzero((C == C[k]).all(axis=1))[0] for k in range(K)])
    shadowed = np.flatnonzero(first != np.arange(K))
    lows = np.unique(first[shadowed])
    near = np.repeat(lows, 12)
    X = np.concatenate([C[near] + 1e-3 * rng.standard_normal((len(near), D)),
                        rng.standard_normal((40, D))]).astype(dtype)
    labels, sq_dist = ops.kmeans_assign(*cuda(X, C))
    labels = to_np(labels)
    assert not np.isin(labels, shadowed).any(), f"seed={seed}: a later duplicate won"
    ref_labels, _ = genfast.reference.kmeans_assign(X, C)
    tied = np.isin(ref_labels, lows)
    assert tied.sum() >= len(near) // 2, f"setup: too few points at duplicated centres; seed={seed}"
    np.testing.assert_array_equal(labels[tied], ref_labels[tied], err_msg=f"seed={seed}")
    assert_assign_matches(X, C, labels, sq_dist, seed=seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(None, 300, 33, 2), (2, 150, 65, 3), (None, 60, 400, 130)],
                         ids=["K33_D2", "B2_K65_D3", "K400_D130"])
def test_cuda_exact_equidistant_lowest_index(shape, dtype, rng, seed):
    B, N, K, D = shape
    lead = () if B is None else (B,)
    X = rng.integers(-3, 4, size=lead + (N, D)).astype(dtype)
    C = rng.integers(-3, 4, size=lead + (K, D)).astype(dtype)
    ref_labels, ref_sq = genfast.reference.kmeans_assign(X, C)
    labels, sq_dist = ops.kmeans_assign(*cuda(X, C))
    np.testing.assert_array_equal(to_np(labels), ref_labels, err_msg=f"seed={seed}")
    np.testing.assert_array_equal(to_np(sq_dist).astype(np.float64), ref_sq, err_msg=f"seed={seed}")


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


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_inputs_not_modified(dtype, rng, seed):
    B, N, K, D = 2, 300, 9, 5
    X, C = random_problem(rng, (B, N, K, D), dtype)
    labels = random_labels(rng, B, N, K)
    w = random_weights(rng, B, N, "BN", dtype)
    Xc, Cc, lc, wc = cuda(X, C, labels, w)
    ops.kmeans_assign(Xc, Cc)
    ops.kmeans_update(Xc, lc, K, wc)
    ops.kmeans_lloyd_step(Xc, Cc, wc[0])
    for name, before, after in zip(["X", "C", "labels", "sample_weight"], (X, C, labels, w), (Xc, Cc, lc, wc)):
        np.testing.assert_array_equal(to_np(after), before, err_msg=f"{name} modified; seed={seed}")


def test_cuda_non_contiguous_inputs(rng, seed):
    X, C = random_problem(rng, (None, 400, 20, 6), "float32")
    Xt = torch.from_numpy(np.ascontiguousarray(X.T)).cuda().T
    Ct = torch.from_numpy(np.repeat(C, 2, axis=0)).cuda()[::2]
    assert not Xt.is_contiguous() and not Ct.is_contiguous()
    labels, sq_dist = ops.kmeans_assign(Xt, Ct)
    assert_assign_matches(X, C, labels, sq_dist, seed=seed)


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
