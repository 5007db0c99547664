"""genfast.reference (the oracle) checked against independent brute force and scikit-learn.

The kernels are only as well tested as their oracle: here each reference function is
compared with plain Python loops (no numpy vectorisation tricks) on small fresh random
inputs, and reference.kmeans_plusplus with sklearn.cluster.kmeans_plusplus.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.cluster import kmeans_plusplus as sk_kmeans_plusplus

from genfast import reference


def brute_assign(X, C):
    """Nearest centre by explicit loops, lowest index on ties, distances as sum (x-c)^2."""
    labels, dists = [], []
    for x in X:
        best_k, best_d = None, None
        for k, c in enumerate(C):
            d = math.fsum((float(a) - float(b)) ** 2 for a, b in zip(x, c))
            if best_d is None or d < best_d:
                best_k, best_d = k, d
        labels.append(best_k)
        dists.append(best_d)
    return np.array(labels, dtype=np.int64), np.array(dists)


def brute_update(X, labels, K, w=None):
    sums = [[0.0] * X.shape[1] for _ in range(K)]
    weights = [0.0] * K
    for i, (x, k) in enumerate(zip(X, labels)):
        wi = 1.0 if w is None else float(w[i])
        weights[k] += wi
        for d, v in enumerate(x):
            sums[k][d] += wi * float(v)
    return np.array(sums), np.array(weights)


@pytest.mark.parametrize("shape", [(1, 1, 1), (17, 5, 3), (40, 40, 2), (25, 7, 1)], ids=["N1", "N17_K5", "K=N", "D1"])
def test_assign_vs_brute_force(shape, rng, seed):
    N, K, D = shape
    X = rng.standard_normal((N, D))
    C = rng.standard_normal((K, D))
    labels, sq = reference.kmeans_assign(X, C)
    bl, bd = brute_assign(X, C)
    np.testing.assert_array_equal(labels, bl, err_msg=f"seed={seed}")
    np.testing.assert_allclose(sq, bd, rtol=1e-13, atol=0, err_msg=f"seed={seed}")
    assert labels.dtype == np.int64


def test_assign_ties_lowest_index(rng, seed):
    """Small integers: exact ties; the reference must pick the lowest index, like the loop."""
    X = rng.integers(-2, 3, size=(60, 2)).astype(float)
    C = rng.integers(-2, 3, size=(12, 2)).astype(float)
    C[7] = C[2]  # and an exact duplicate
    labels, sq = reference.kmeans_assign(X, C)
    bl, bd = brute_assign(X, C)
    np.testing.assert_array_equal(labels, bl, err_msg=f"seed={seed}")
    np.testing.assert_array_equal(sq, bd, err_msg=f"seed={seed}")
    assert not (labels == 7).any(), f"seed={seed}"


def test_assign_batched_is_per_problem(rng, seed):
    X = rng.standard_normal((3, 20, 4))
    C = rng.standard_normal((3, 6, 4))
    labels, sq = reference.kmeans_assign(X, C)
    assert labels.shape == (3, 20) and sq.shape == (3, 20)
    for b in range(3):
        bl, bd = brute_assign(X[b], C[b])
        np.testing.assert_array_equal(labels[b], bl, err_msg=f"seed={seed}")
        np.testing.assert_allclose(sq[b], bd, rtol=1e-13, err_msg=f"seed={seed}")


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_update_vs_brute_force(weighted, rng, seed):
    N, K, D = 50, 7, 3
    X = rng.standard_normal((N, D))
    labels = rng.choice([0, 1, 3, 4, 6], size=N)  # clusters 2 and 5 empty
    w = rng.uniform(0, 2, size=N) if weighted else None
    sums, weights = reference.kmeans_update(X, labels, K, w)
    bs, bw = brute_update(X, labels, K, w)
    np.testing.assert_allclose(sums, bs, rtol=1e-13, atol=1e-13, err_msg=f"seed={seed}")
    np.testing.assert_allclose(weights, bw, rtol=1e-13, err_msg=f"seed={seed}")
    assert (sums[[2, 5]] == 0).all() and (weights[[2, 5]] == 0).all(), f"seed={seed}"


@pytest.mark.parametrize("wshape", [None, "N", "BN"])
def test_update_batched_is_per_problem(wshape, rng, seed):
    B, N, K, D = 3, 30, 5, 2
    X = rng.standard_normal((B, N, D))
    labels = rng.integers(0, K, size=(B, N))
    w = None if wshape is None else rng.uniform(0, 2, size=(N,) if wshape == "N" else (B, N))
    sums, weights = reference.kmeans_update(X, labels, K, w)
    assert sums.shape == (B, K, D) and weights.shape == (B, K)
    for b in range(B):
        wb = None if w is None else (w if w.ndim == 1 else w[b])
        bs, bw = brute_update(X[b], labels[b], K, wb)
        np.testing.assert_allclose(sums[b], bs, rtol=1e-13, atol=1e-13, err_msg=f"seed={seed}")
        np.testing.assert_allclose(weights[b], bw, rtol=1e-13, err_msg=f"seed={seed}")


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_inertia_vs_loop(weighted, rng, seed):
    X = rng.standard_normal((30, 3))
    C = rng.standard_normal((4, 3))
    labels = rng.integers(0, 4, size=30)  # any labels, not only the nearest
    w = rng.uniform(0, 2, size=30) if weighted else None
    expected = math.fsum((1.0 if w is None else w[i]) * math.fsum((X[i, d] - C[labels[i], d]) ** 2 for d in range(3))
                         for i in range(30))
    assert reference.inertia(X, C, labels, w) == pytest.approx(expected, rel=1e-13), f"seed={seed}"


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_lloyd_iteration_by_hand(weighted, rng, seed):
    """One Lloyd step computed by hand on tiny data: assign by loops, new centre = weighted
    mean of its points, an empty cluster keeps its old centre, inertia against the old centres."""
    N, K, D = 9, 4, 2
    X = rng.standard_normal((N, D))
    C = rng.standard_normal((K, D))
    C[3] = 1e6  # far away: cluster 3 receives no point
    w = rng.uniform(0.1, 2, size=N) if weighted else None
    new, labels, inertia = reference.lloyd_iteration(X, C, w)
    bl, bd = brute_assign(X, C)
    np.testing.assert_array_equal(labels, bl, err_msg=f"seed={seed}")
    wv = np.ones(N) if w is None else w
    for k in range(K):
        members = [i for i in range(N) if bl[i] == k]
        if not members:
            np.testing.assert_array_equal(new[k], C[k], err_msg=f"empty cluster {k} moved; seed={seed}")
            continue
        tot = math.fsum(wv[i] for i in members)
        for d in range(D):
            mean = math.fsum(wv[i] * X[i, d] for i in members) / tot
            assert new[k, d] == pytest.approx(mean, rel=1e-12, abs=1e-14), f"centre {k}; seed={seed}"
    assert not (bl == 3).any(), f"setup: cluster 3 should be empty; seed={seed}"
    assert inertia == pytest.approx(math.fsum(wv[i] * bd[i] for i in range(N)), rel=1e-13), f"seed={seed}"
    np.testing.assert_array_equal(C[3], 1e6)  # the input centres are not modified


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("K,n_local_trials", [(1, None), (5, None), (12, None), (6, 1), (6, 7)])
def test_kmeans_plusplus_matches_sklearn(K, n_local_trials, weighted, rng, seed):
    """Same seed, same float64 data: the same chosen indices as sklearn.cluster.kmeans_plusplus."""
    X = rng.standard_normal((200, 3)) * rng.uniform(0.5, 4, size=3)
    w = rng.uniform(0.1, 3, size=200) if weighted else None
    state = int(rng.integers(2**31))
    centres, idx = reference.kmeans_plusplus(X, K, sample_weight=w, random_state=state, n_local_trials=n_local_trials)
    sk_centres, sk_idx = sk_kmeans_plusplus(X, K, sample_weight=w, random_state=state, n_local_trials=n_local_trials)
    np.testing.assert_array_equal(idx, sk_idx, err_msg=f"seed={seed}")
    np.testing.assert_array_equal(centres, X[idx], err_msg=f"seed={seed}")
    np.testing.assert_array_equal(centres, sk_centres, err_msg=f"seed={seed}")
    assert len(set(idx.tolist())) == K, f"repeated index; seed={seed}"


def test_kmeans_plusplus_accepts_randomstate(rng, seed):
    X = rng.standard_normal((100, 2))
    state = int(rng.integers(2**31))
    a = reference.kmeans_plusplus(X, 5, random_state=np.random.RandomState(state))[1]
    b = reference.kmeans_plusplus(X, 5, random_state=state)[1]
    np.testing.assert_array_equal(a, b, err_msg=f"seed={seed}")


def test_kmeans_plusplus_zero_weight_never_chosen(rng, seed):
    X = rng.standard_normal((80, 2))
    w = rng.uniform(0.5, 1.5, size=80)
    zero = rng.choice(80, size=40, replace=False)
    w[zero] = 0
    _, idx = reference.kmeans_plusplus(X, 10, sample_weight=w, random_state=int(rng.integers(2**31)))
    assert not np.isin(idx, zero).any(), f"seed={seed}"
