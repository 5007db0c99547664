"""Bounded memory (issue 7): KMeans.fit, GaussianMixture.score_samples, predict and fit (random
init, whose (N, K) initial responsibilities are now formed a piece at a time) need at most
25% of the input in extra resident memory, plus a fixed allowance (N=4,000,000 x 16
float32 here); and the piecewise fit
that makes it so gives the same results as one pass over all the rows.

The peak is measured by benchmarks/bench_memory.py (the same code that records the issue's
N=20,000,000 figures), each case in a fresh process: VmHWM after the call minus VmRSS before
it, with the peak mark reset just before the call.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import genfast
from genfast import _backend as be
from genfast import _kmeans, ops

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_memory.py"

#: Extra bytes allowed besides 25% of the input, for costs that do not grow with N: the CPU
#: fit's 16 MiB piece of centred rows (_kmeans._PIECE_BYTES), piece-sized temporaries
#: (k-means++ candidate distances, a piece's labels and distances, (rows, K)
#: log-responsibilities in predict), what the allocator keeps resident after freeing them and
#: the kernels' scratch. test_fixed_costs_fit_the_allowance measures them at N = one piece
#: (262,144 rows of 16 float32): 33 MiB for KMeans.fit, 16 MiB for predict, 0 for
#: score_samples on the 2-core development machine. At N=20,000,000 the allowance is 3% of the
#: 1.28 GB input. At the 4,000,000 rows tested here KMeans.fit measured 68 MiB (its int64
#: labels and float32 distances are 12 of the 25%), so the test fails on any further
#: temporary of about 9 bytes a row or more, and on each of those this branch removed (a
#: centred copy of X, 64 bytes a row; k-means++'s (trials, N) matrices; a second (N,) int64
#: label array; predict's (N, K) log-responsibilities).
ALLOWANCE_BYTES = 40 << 20
#: Rows of the fixed-cost measurement: one full piece of 16 float32 features.
ONE_PIECE_ROWS = (16 << 20) // 64
def _bench():
    spec = importlib.util.spec_from_file_location("bench_memory", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


needs_proc = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")


@needs_proc
@pytest.mark.parametrize("case", ["kmeans_fit", "gmm_score_samples", "gmm_predict", "gmm_fit"])
def test_fixed_costs_fit_the_allowance(case):
    r = _bench().measure(case, ONE_PIECE_ROWS)
    assert r["extra_peak_bytes"] <= ALLOWANCE_BYTES, r


@needs_proc
@pytest.mark.parametrize("case", ["kmeans_fit", "gmm_score_samples", "gmm_predict", "gmm_fit"])
def test_extra_peak_memory_within_a_quarter_of_the_input(case):
    bench = _bench()
    r = bench.measure(case, 4_000_000)
    budget = bench.BUDGET_FRACTION * r["input_bytes"] + ALLOWANCE_BYTES
    assert r["extra_peak_bytes"] <= budget, (
        f"{case}: {r['extra_peak_bytes'] / 2**20:.1f} MiB extra at peak > {budget / 2**20:.1f} MiB; {r}")


# --------------------------------------------------------------------------- same results in pieces
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 3, 2), (8192, 2, 3), (8193, 5, 7), (30_000, 3, 17),
                                   (3001, 300, 5)])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("shifted", [False, True], ids=["unshifted", "shifted"])
def test_lloyd_step_accumulate_in_pieces_is_one_lloyd_step(shape, dtype, weighted, shifted, rng, seed):
    """Pieces of X starting at multiples of SUM_BLOCK_POINTS, with the float64 totals carried
    over, give bitwise the labels, distances and (rounded) sums of one kmeans_lloyd_step, and
    every output element is written. With a shift, they are those of kmeans_lloyd_step on
    numpy's X - shift (D=300 takes centred chunks shorter than the assignment's 256 points)."""
    N, D, K = shape
    X = (rng.standard_normal((N, D)) * 3 + rng.uniform(-50, 50, size=D)).astype(dtype)
    C = X[rng.choice(N, size=min(K, N), replace=False)].copy()
    K = len(C)
    w = rng.uniform(0.1, 2.0, size=N).astype(dtype) if weighted else None
    shift = X.mean(axis=0) if shifted else None
    if shifted:
        C -= shift
    labels, sq_dist, sums, wsum = ops.kmeans_lloyd_step(X - shift if shifted else X, C, w, return_means=False)
    block = be._core.SUM_BLOCK_POINTS
    got_labels = np.full(N, -1, dtype=np.int64)
    got_sq = np.full(N, np.nan, dtype=dtype)
    totals = np.zeros((1, K * D + K))
    starts = [0] + sorted(rng.choice(np.arange(1, N // block + 1), size=min(2, N // block), replace=False) * block)
    for i0, i1 in zip(starts, starts[1:] + [N]):
        if i1 <= i0:
            continue
        piece_labels = np.full((1, i1 - i0), -1, dtype=np.int64)
        piece_sq = np.full((1, i1 - i0), np.nan, dtype=dtype)
        be._core.kmeans_lloyd_step_accumulate(X[None, i0:i1], shift, C[None],
                                              None if w is None else w[None, i0:i1],
                                              piece_labels, piece_sq, totals)
        got_labels[i0:i1], got_sq[i0:i1] = piece_labels[0], piece_sq[0]
    msg = f"seed={seed} shape={shape} starts={starts}"
    np.testing.assert_array_equal(got_labels, labels, err_msg=msg)
    np.testing.assert_array_equal(got_sq, sq_dist, err_msg=msg)
    np.testing.assert_array_equal(totals[0, : K * D].reshape(K, D).astype(dtype), sums, err_msg=msg)
    np.testing.assert_array_equal(totals[0, K * D:].astype(dtype), wsum, err_msg=msg)


def test_lloyd_step_accumulate_checks_shapes():
    X = np.zeros((1, 10, 3))
    C = np.zeros((1, 2, 3))
    labels, sq_dist = np.zeros((1, 10), np.int64), np.zeros((1, 10))
    with pytest.raises(ValueError, match="totals"):
        be._core.kmeans_lloyd_step_accumulate(X, None, C, None, labels, sq_dist, np.zeros((1, 7)))
    with pytest.raises(ValueError, match="shift"):
        be._core.kmeans_lloyd_step_accumulate(X, np.zeros(2), C, None, labels, sq_dist, np.zeros((1, 8)))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("init", ["k-means++", "random", "array"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_kmeans_fit_in_small_pieces_is_the_one_piece_fit(init, dtype, weighted, rng, seed, monkeypatch):
    """KMeans.fit with pieces of one summation block (several pieces) gives bitwise the labels,
    centres and iteration count of the fit with X in one piece, from the same seed; the
    inertia to float64 rounding (its float64 sum runs piece by piece)."""
    n, d = 3 * be._core.SUM_BLOCK_POINTS + 1234, 3
    X = (rng.standard_normal((n, d)) * [1.0, 2.0, 0.5] + rng.normal(0, 3, size=d)).astype(dtype)
    # Empty clusters on the way: two initial centres far away from the data.
    X[rng.choice(n, size=40, replace=False)] += 25.0
    sw = rng.uniform(0.2, 2.0, size=n) if weighted else None
    state = int(rng.integers(2**31))
    init_arg = X[rng.choice(n, size=6, replace=False)] if init == "array" else init
    kw = dict(n_clusters=6, init=init_arg, n_init=2 if init == "random" else 1, max_iter=20, random_state=state)
    monkeypatch.setattr(_kmeans, "_PIECE_BYTES", 1 << 40)
    whole = genfast.KMeans(**kw).fit(X, sample_weight=sw)
    monkeypatch.setattr(_kmeans, "_PIECE_BYTES", 1)  # pieces of one summation block
    pieces = genfast.KMeans(**kw).fit(X, sample_weight=sw)
    msg = f"seed={seed} init={init} dtype={dtype} weighted={weighted}"
    np.testing.assert_array_equal(pieces.labels_, whole.labels_, err_msg=msg)
    np.testing.assert_array_equal(pieces.cluster_centers_, whole.cluster_centers_, err_msg=msg)
    assert pieces.n_iter_ == whole.n_iter_, msg
    np.testing.assert_allclose(pieces.inertia_, whole.inertia_, rtol=1e-12, err_msg=msg)


def test_relocation_in_pieces_matches_one_piece(rng, seed, monkeypatch):
    """Empty clusters are moved onto the same farthest points whether X is one piece or many
    (the farthest points of each piece hold the farthest of all X)."""
    n = 2 * be._core.SUM_BLOCK_POINTS + 77
    X = rng.standard_normal((n, 2))
    X[-3:] += 100.0  # the farthest points sit in the last piece
    init = np.vstack([X[:2], [[1e3, 1e3], [-1e3, 1e3], [1e3, -1e3]]])  # three centres far from every point
    monkeypatch.setattr(_kmeans, "_PIECE_BYTES", 1 << 40)
    whole = genfast.KMeans(5, init=init, max_iter=3).fit(X)
    monkeypatch.setattr(_kmeans, "_PIECE_BYTES", 1)
    pieces = genfast.KMeans(5, init=init, max_iter=3).fit(X)
    np.testing.assert_array_equal(pieces.labels_, whole.labels_, err_msg=f"seed={seed}")
    np.testing.assert_array_equal(pieces.cluster_centers_, whole.cluster_centers_, err_msg=f"seed={seed}")
    assert len(np.unique(pieces.labels_)) == 5, f"seed={seed}"


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gmm_predict_in_pieces_is_argmax_of_predict_proba(dtype, rng, seed, monkeypatch):
    """predict and fit_predict (the E-step a piece of rows at a time) give the argmax of the
    whole-X responsibilities."""
    from genfast import _mixture

    X = rng.standard_normal((5000, 3)).astype(dtype)
    gm = genfast.GaussianMixture(4, random_state=int(rng.integers(2**31)), max_iter=5).fit(X)
    expected = np.argmax(gm.predict_proba(X), axis=1)
    monkeypatch.setattr(_mixture, "_PIECE_BYTES", 4 * 4 * 8 * 37)  # pieces of 37 rows or so
    np.testing.assert_array_equal(gm.predict(X), expected, err_msg=f"seed={seed}")
    refit = genfast.GaussianMixture(4, random_state=gm.random_state, max_iter=5)
    np.testing.assert_array_equal(refit.fit_predict(X), refit.predict(X), err_msg=f"seed={seed}")
