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
