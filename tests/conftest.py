"""Shared fixtures and helpers for the genfast test suite.

Random inputs are fresh on every run: each test that draws data gets its own seed from
``secrets`` (or from the environment variable GENFAST_TEST_SEED, to replay a failure), and
the seed is printed and put into every assertion message, so a failure says how to
reproduce it:  GENFAST_TEST_SEED=<seed> python -m pytest tests/...::<test id>

GPU tests (``@pytest.mark.gpu``) are skipped unless torch is importable, torch sees a CUDA
device and genfast's _cuda module can use it (genfast._backend.cuda_status()).
"""

from __future__ import annotations

import os
import secrets

import numpy as np
import pytest

import genfast
from genfast import reference

# tests/properties/prop_*.py run in subprocesses from tests/test_properties.py, with their own
# conftest (hypothesis profiles); the main session does not collect that folder.
collect_ignore = ["properties"]
#: examples the property tests ran, per "file::test" (filled by tests/test_properties.py)
PROPERTY_EXAMPLES = pytest.StashKey[dict]()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    counts = config.stash.get(PROPERTY_EXAMPLES, None)
    if not counts:
        return
    profile = os.environ.get("GENFAST_HYPOTHESIS_PROFILE", "ci")
    terminalreporter.section("hypothesis examples")
    for name, n in sorted(counts.items()):
        terminalreporter.write_line(f"{n:7d}  {name}")
    terminalreporter.write_line(f"{sum(counts.values()):7d}  inputs tried by the property tests (profile {profile!r})")


# --------------------------------------------------------------------------- seeds


@pytest.fixture
def seed(request):
    """A fresh 32-bit seed per test (or GENFAST_TEST_SEED), printed and recorded."""
    env = os.environ.get("GENFAST_TEST_SEED")
    value = int(env) if env else secrets.randbits(32)
    print(f"\n[{request.node.nodeid}] seed={value}  (replay: GENFAST_TEST_SEED={value})")
    request.node.user_properties.append(("seed", value))
    return value


@pytest.fixture
def rng(seed):
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- GPU skip logic


def _gpu_skip_reason():
    """None if GPU tests can run here, else why not."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    usable, why = genfast._backend.cuda_status()
    if not usable:
        return f"genfast cannot use CUDA: {why}"
    return None


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    reason = _gpu_skip_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"gpu test skipped: {reason}")
    for item in gpu_items:
        item.add_marker(skip)


# --------------------------------------------------------------------------- helpers
# Imported by the test modules as `from conftest import ...` (tests/ is on sys.path under
# pytest's default rootdir/conftest handling).

# Relative gap under which two reference distances count as a float-rounding tie: the kernel
# ranks centres by ||c||^2 - 2 x.c, whose rounding may reorder near-equal distances.
LABEL_GAP_RTOL = {"float32": 1e-4, "float64": 1e-10}
# The winning distance is recomputed directly as sum (x - c)^2, so it is accurate.
SQ_DIST_RTOL = {"float32": 1e-5, "float64": 1e-12}
# Update sums are accumulated in float64; float32 only rounds the result.
SUMS_RTOL = {"float32": 1e-5, "float64": 1e-12}


# (B, N, K, D) problem shapes for the kernel-vs-reference tests of kmeans_assign and
# kmeans_update (tests/test_kmeans_ops.py, every array kind); B None = unbatched.
# CPU: float32 AVX-512 panels hold 32 centres, float64 16; register tiles hold 6 or 8 points;
# assignment chunks are 256 points; centre blocks are ~192 KiB of packed centres (176 float64
# / 352 float32 centres at D=130); update sums run over fixed blocks of 8192 points.
# CUDA: N5000_K70 needs many thread blocks.
SHAPES = {
    "N1_K1_D1": (None, 1, 1, 1),
    "N1": (None, 1, 7, 3),
    "N1_K5": (None, 1, 5, 3),
    "K1": (None, 50, 1, 5),
    "K1_D4": (None, 50, 1, 4),
    "K=N": (None, 33, 33, 7),
    "N257_K33_D7": (None, 257, 33, 7),
    "K31": (None, 100, 31, 4),
    "K32": (None, 100, 32, 4),
    "K65": (None, 100, 65, 9),
    "D1": (None, 300, 17, 1),
    "D1_K65": (None, 300, 65, 1),
    "D130": (None, 70, 40, 130),
    "D130_K31": (None, 120, 31, 130),
    "D130_K400_blocks": (None, 40, 400, 130),
    "N5000_K70": (None, 5000, 70, 16),
    "N8200_two_blocks": (None, 8200, 5, 3),
    "B3": (3, 50, 9, 7),
    "B2_N257_K65": (2, 257, 65, 3),
    "B2_D130_K33": (2, 9, 33, 130),
    "B2_N8193": (2, 8193, 4, 2),
    "B4_N1_K1_D1": (4, 1, 1, 1),
}


def torch_or_skip():
    """The torch module, or skip the test where torch is not installed."""
    return pytest.importorskip("torch")


def cuda_device():
    """The current CUDA device, where as_kind("cuda", ...) puts its tensors by default."""
    torch = torch_or_skip()
    return torch.device("cuda", torch.cuda.current_device())


def as_kind(kind, *arrays, device=None):
    """The arrays as numpy arrays (kind "numpy"), torch CPU tensors ("torch") or torch CUDA
    tensors ("cuda", on `device`, default the current CUDA device); None passes through."""
    if kind == "numpy":
        return arrays
    torch = torch_or_skip()
    if kind == "torch":
        device = torch.device("cpu")
    elif kind == "cuda":
        device = device or cuda_device()
    else:
        raise ValueError(f"unknown array kind {kind!r}")
    return tuple(None if a is None else torch.from_numpy(np.array(a, copy=True)).to(device) for a in arrays)


def check_kind(kind, out, dtype, shape, *, seed, what, device=None):
    """out is a numpy array / torch CPU tensor / torch CUDA tensor (on `device`, default the
    current CUDA device, i.e. where as_kind put the inputs) of the given dtype name and shape."""
    msg = f"{what}: seed={seed}"
    if kind == "numpy":
        assert isinstance(out, np.ndarray), f"{msg}: expected numpy, got {type(out)}"
        assert out.dtype == np.dtype(dtype), f"{msg}: dtype {out.dtype} != {dtype}"
    else:
        torch = torch_or_skip()
        assert isinstance(out, torch.Tensor), f"{msg}: expected torch.Tensor, got {type(out)}"
        assert out.dtype == getattr(torch, dtype), f"{msg}: dtype {out.dtype} != {dtype}"
        if kind == "cuda":
            expected = device or cuda_device()
            assert out.device == expected, f"{msg}: on {out.device}, input on {expected}"
        else:
            assert out.device.type == "cpu", f"{msg}: on {out.device}, input on the CPU"
    assert tuple(out.shape) == tuple(shape), f"{msg}: shape {tuple(out.shape)} != {shape}"


def random_labels(rng, B, N, K):
    """Labels in [0, K) that (for K > 1) leave about a third of the clusters empty."""
    lead = () if B is None else (B,)
    if K > 1:
        used = rng.choice(K, size=max(1, K - K // 3), replace=False)
        return used[rng.integers(0, len(used), size=lead + (N,))].astype(np.int64)
    return rng.integers(0, K, size=lead + (N,)).astype(np.int64)


def random_weights(rng, B, N, mode, dtype):
    """None, a (N,) vector or a (B, N) array of non-negative weights with some exact zeros."""
    if mode is None:
        return None
    shape = (N,) if mode == "N" else (B, N)
    w = rng.uniform(0.0, 3.0, size=shape)
    w[rng.random(shape) < 0.1] = 0.0
    return w.astype(dtype)


def random_update_problem(rng, shape, wmode, dtype):
    """(X, labels, sample_weight) numpy inputs of kmeans_update for shape (B, N, K, D): labels
    from random_labels, weights from random_weights with mode wmode (None: no weights)."""
    B, N, K, _ = shape
    X, _ = random_problem(rng, shape, dtype)
    return X, random_labels(rng, B, N, K), random_weights(rng, B, N, wmode, dtype)


# (B, N, K, D) shapes for the raw-binding tests that poison every output (_core in
# test_kmeans_ops.py, the raw-pointer _cuda API in test_cuda.py).
WRITE_ASSIGN_SHAPES = {
    "N1_K1_D1": (1, 1, 1, 1),
    "N257_K33": (1, 257, 33, 7),
    "K65_D130": (1, 100, 65, 130),
    "B3_K65_D130": (3, 100, 65, 130),
    "B3_K31": (3, 50, 31, 5),
    "B2_K400_D130": (2, 9, 400, 130),
    "K1_D1": (1, 300, 1, 1),
    "N5000_K1_D1": (1, 5000, 1, 1),
}
WRITE_UPDATE_SHAPES = {
    "N1_K1_D1": (1, 1, 1, 1),
    "N257_K33": (1, 257, 33, 7),
    "B3_D130": (3, 50, 9, 130),
    "B2_N8193": (2, 8193, 5, 3),
    "B2_N20000": (2, 20_000, 5, 3),
    "K40_N10_mostly_empty": (1, 10, 40, 2),
}


def to_np(a):
    """numpy copy of a numpy array or a (CPU or CUDA) torch tensor."""
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def random_problem(rng, shape, dtype, *, scale=1.0, centers_from_points=False):
    """(X, C) float arrays: X (N, D) or (B, N, D), C (K, D) or (B, K, D) for shape (B, N, K, D)
    with B None meaning unbatched."""
    B, N, K, D = shape
    lead = () if B is None else (B,)
    X = (rng.standard_normal(lead + (N, D)) * scale).astype(dtype)
    if centers_from_points and K <= N:
        idx = rng.choice(N, size=K, replace=False)
        C = X[..., idx, :].copy()
    else:
        C = (rng.standard_normal(lead + (K, D)) * scale).astype(dtype)
    return X, C


def ref_sq_dists(X, C):
    """Full float64 (.., N, K) squared distance matrix, the reference's way (sum (x-c)^2)."""
    X = np.asarray(X, dtype=np.float64)
    C = np.asarray(C, dtype=np.float64)
    diff = X[..., :, None, :] - C[..., None, :, :]
    return (diff * diff).sum(axis=-1)


def assert_assign_matches(X, C, labels, sq_dist, *, seed, dtype=None, context=""):
    """Check kernel labels/sq_dist against genfast.reference.kmeans_assign.

    A label may differ from the reference argmin only where the reference distance to the
    kernel's label is within LABEL_GAP_RTOL of the reference minimum (a float-rounding tie);
    the squared distance must equal the reference distance to the kernel's own label.
    """
    X = to_np(X)
    C = to_np(C)
    labels = to_np(labels)
    sq_dist = to_np(sq_dist)
    dtype = dtype or X.dtype.name
    msg = f"seed={seed} dtype={dtype} X{X.shape} C{C.shape} {context}"
    assert labels.dtype == np.int64, msg
    assert labels.shape == X.shape[:-1], msg
    assert sq_dist.shape == X.shape[:-1], msg
    ref_labels, ref_sq = reference.kmeans_assign(X, C)
    full = ref_sq_dists(X, C)
    K = C.shape[-2]
    assert labels.min(initial=0) >= 0 and labels.max(initial=0) < K, f"label out of range; {msg}"
    ours = np.take_along_axis(full, labels[..., None], axis=-1)[..., 0]
    differ = labels != ref_labels
    gap_ok = ours <= ref_sq * (1 + LABEL_GAP_RTOL[dtype])
    bad = differ & ~gap_ok
    assert not bad.any(), (
        f"{bad.sum()} labels differ from the reference argmin beyond a rounding tie; first at "
        f"{np.argwhere(bad)[0].tolist()}; {msg}")
    np.testing.assert_allclose(sq_dist.astype(np.float64), ours, rtol=SQ_DIST_RTOL[dtype], atol=0,
                               err_msg=f"sq_dist vs reference distance to the chosen label; {msg}")


def assert_update_matches(X, labels, K, weights, out, wsum, *, seed, return_means, context=""):
    """Check kmeans_update sums-or-means and weights against genfast.reference.kmeans_update.

    Tolerance is relative to the scale of the sums: sum_i |w_i x_i| per element, so the
    check is sharp for every element whatever cancellation the data has.
    """
    X = to_np(X)
    labels = to_np(labels)
    out = to_np(out).astype(np.float64)
    wsum = to_np(wsum).astype(np.float64)
    w = None if weights is None else to_np(weights)
    dtype = X.dtype.name
    msg = f"seed={seed} dtype={dtype} X{X.shape} K={K} return_means={return_means} {context}"
    ref_sums, ref_w = reference.kmeans_update(X, labels, K, w)
    abs_sums, _ = reference.kmeans_update(np.abs(X.astype(np.float64)), labels, K, w)
    rtol = SUMS_RTOL[dtype]
    np.testing.assert_allclose(wsum, ref_w, rtol=rtol, atol=0, err_msg=f"weights; {msg}")
    empty = ref_w == 0
    if return_means:
        denom = np.where(empty, 1.0, ref_w)[..., None]
        expected = np.where(empty[..., None], 0.0, ref_sums / denom)
        scale = abs_sums / denom
    else:
        expected, scale = ref_sums, abs_sums
    err = np.abs(out - expected)
    tol = rtol * scale + (1e-30 if dtype == "float64" else 1e-38)
    assert np.all(err <= tol), (
        f"{'means' if return_means else 'sums'} differ: max err/tol "
        f"{np.max(err / tol):.3g} at {np.unravel_index(np.argmax(err / tol), err.shape)}; {msg}")
    # Empty clusters (zero total weight): an exact row of zeros and weight exactly 0.
    assert np.all(out[empty] == 0), f"empty cluster rows not zero; {msg}"
    assert np.all(wsum[empty] == 0), f"empty cluster weights not zero; {msg}"
    assert np.isfinite(out).all() and np.isfinite(wsum).all(), f"non-finite output; {msg}"
