"""genfast.ops k-means kernels against genfast.reference on fresh random inputs, for every
array kind: numpy arrays, torch CPU tensors and (marked `gpu`, skipped without a usable
CUDA device) torch CUDA tensors.

Covers: kmeans_assign / kmeans_update / kmeans_lloyd_step on awkward shapes (N=1, K=1, K=N,
D=1, sizes off every tile, D=130, several centre blocks, several update blocks and waves,
many CUDA thread blocks, batched B>1), float32/float64, each kind in -> same kind out (on
the input's device); every output element written (raw _core bindings with poisoned
outputs); tie-breaking to the lowest index; thread-count determinism; inputs never
modified; argument validation. CUDA-only behaviour (streams, devices, the raw _cuda API,
run-to-run determinism, KMeans on CUDA) is in test_cuda.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    SHAPES,
    SQ_DIST_RTOL,
    WRITE_ASSIGN_SHAPES,
    WRITE_UPDATE_SHAPES,
    as_kind,
    assert_assign_matches,
    assert_update_matches,
    check_kind,
    random_labels,
    random_problem,
    random_update_problem,
    random_weights,
    ref_sq_dists,
    to_np,
    torch_or_skip,
)

from genfast import _core, ops, reference

DTYPES = ["float32", "float64"]
KINDS = ["numpy", "torch", pytest.param("cuda", marks=pytest.mark.gpu)]


def _with_wmodes(shapes):
    """(shape, weight mode) params: no weights and (N,) weights, plus (B, N) when batched."""
    for name, shape in shapes.items():
        for mode in [None, "N"] + (["BN"] if shape[0] is not None else []):
            yield pytest.param(shape, mode, id=f"{name}-w{mode}")


# =========================================================================== kmeans_assign


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_assign_matches_reference(shape, dtype, kind, rng, seed):
    X, C = random_problem(rng, shape, dtype)
    Xk, Ck = as_kind(kind, X, C)
    labels, sq_dist = ops.kmeans_assign(Xk, Ck)
    out_shape = X.shape[:-1]
    check_kind(kind, labels, "int64", out_shape, seed=seed, what="labels")
    check_kind(kind, sq_dist, dtype, out_shape, seed=seed, what="sq_dist")
    assert_assign_matches(X, C, labels, sq_dist, seed=seed, context=f"kind={kind}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(None, 33, 33, 7), (None, 1, 1, 4), (None, 65, 65, 130), (2, 40, 40, 3)],
                         ids=["N33", "N1", "N65_D130", "B2_N40"])
def test_assign_centres_are_the_points(shape, dtype, rng, seed):
    """K = N with C a permutation of X: every point's nearest centre is itself at distance 0."""
    B, N, K, D = shape
    X, _ = random_problem(rng, shape, dtype)
    perm = rng.permutation(N)
    C = X[..., perm, :].copy()
    labels, sq_dist = ops.kmeans_assign(X, C)
    expected = np.broadcast_to(np.argsort(perm), labels.shape)
    np.testing.assert_array_equal(labels, expected, err_msg=f"seed={seed}")
    np.testing.assert_array_equal(sq_dist, np.zeros_like(sq_dist), err_msg=f"seed={seed}")


# Centre pairs (i, j) made near-tied below: both in one panel; in different panels and lanes;
# in the same SIMD lane of different panels (float32 AVX-512: 16 lanes, panels of 32).
NEAR_TIE_PAIRS = {"same_panel": (0, 1), "other_panel": (3, 40), "same_lane": (5, 37)}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pair", NEAR_TIE_PAIRS.values(), ids=NEAR_TIE_PAIRS.keys())
@pytest.mark.parametrize("D", [3, 40])
def test_assign_resolves_near_ties_by_the_direct_distance(pair, D, dtype, kind):
    """Regression (seed 366607134, D1_K65, float32): far from the origin, the rank score
    ||c||^2 - 2 x.c rounds by more than the gap between two centres' true distances, and the
    kernel picked the farther centre. Two centres at base - 0.25 and base + 0.26 with points
    swept across their midpoint: every label must be the exact nearest centre, with no
    rounding-tie allowance, and sq_dist the exact distance to it. On the CPU, D=3 takes the
    point-major search and D=40 the centre-major one, in both dtypes."""
    base = {"float32": 1000.0, "float64": 3.0e7}[dtype]  # rank-score error ~0.2 in both
    base /= np.sqrt(D / 3)  # the same error for every D: it grows with ||x||^2 ~ D base^2
    K = 65
    i, j = pair
    C = np.full((K, D), base) + 50.0 * np.arange(1, K + 1)[:, None]  # the other centres: far away
    C[i] = base - 0.25
    C[j] = base + 0.26
    X = np.repeat((base + np.linspace(-0.12, 0.13, 601))[:, None], D, axis=1)
    X, C = X.astype(dtype), C.astype(dtype)
    full = ref_sq_dists(X, C)  # float64 from the float32/float64 values: exact here
    expected = np.argmin(full, axis=1)
    assert set(expected) == {i, j}, "the sweep must cross the midpoint"
    # The case is hard: the expanded form in the data's own precision gets some labels wrong.
    expanded = (C * C).sum(axis=1)[None, :] - 2 * (X @ C.T)
    assert (np.argmin(expanded, axis=1) != expected).any(), "the construction no longer near-ties"
    Xk, Ck = as_kind(kind, X, C)
    labels, sq_dist = ops.kmeans_assign(Xk, Ck)
    step_labels = ops.kmeans_lloyd_step(Xk, Ck)[0]
    for what, got in (("kmeans_assign", labels), ("kmeans_lloyd_step", step_labels)):
        wrong = np.flatnonzero(to_np(got) != expected)
        assert wrong.size == 0, (
            f"{what} ({kind}, {dtype}): {wrong.size} points labelled with the farther centre, first "
            f"x={X[wrong[0], 0]!r} got {to_np(got)[wrong[0]]} expected {expected[wrong[0]]}")
    np.testing.assert_allclose(to_np(sq_dist).astype(np.float64), full[np.arange(len(X)), expected],
                               rtol=SQ_DIST_RTOL[dtype], atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_assign_far_from_origin_float_accuracy(dtype, rng, seed):
    """Points close to their centres but far from the origin: the direct sum (x-c)^2 keeps
    the winning distance accurate where ||x||^2 - 2x.c + ||c||^2 would cancel."""
    N, K, D = 200, 12, 16
    # Centres well apart (so the ranking is unambiguous even in float32 at this offset),
    # points within 1e-2 of them (so the expanded formula would cancel to noise).
    C = (1e3 + 10 * rng.standard_normal((K, D))).astype(dtype)
    X = (C[rng.integers(0, K, N)] + 1e-2 * rng.standard_normal((N, D))).astype(dtype)
    labels, sq_dist = ops.kmeans_assign(X, C)
    assert_assign_matches(X, C, labels, sq_dist, seed=seed)


@pytest.mark.parametrize("kind", KINDS)
def test_assign_dtype_conversion(kind, rng, seed):
    """float32 stays float32, integers become float64, C takes X's dtype."""
    X, C = random_problem(rng, (None, 60, 9, 5), "float64")
    cases = [
        (X.astype(np.float32), C.astype(np.float64), "float32"),
        (X.astype(np.float64), C.astype(np.float32), "float64"),
        (np.rint(X * 4).astype(np.int32), np.rint(C * 4).astype(np.int64), "float64"),
        (X.astype(np.float16), C.astype(np.float16), "float32"),
    ]
    for Xi, Ci, expect in cases:
        Xk, Ck = as_kind(kind, Xi, Ci)
        labels, sq_dist = ops.kmeans_assign(Xk, Ck)
        check_kind(kind, sq_dist, expect, (60,), seed=seed, what=f"{Xi.dtype}/{Ci.dtype}")
        check_kind(kind, labels, "int64", (60,), seed=seed, what=f"{Xi.dtype}/{Ci.dtype}")
        # The reference sees exactly the values the kernel saw (C cast to X's float dtype).
        Xf = Xi.astype(expect)
        Cf = Ci.astype(expect)
        assert_assign_matches(Xf, Cf, labels, sq_dist, seed=seed, context=f"{Xi.dtype}/{Ci.dtype}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N", [90, 400])
def test_assign_non_contiguous_inputs(N, kind, dtype, rng, seed):
    """Strided / Fortran-ordered inputs give the same result as their contiguous copies."""
    X, C = random_problem(rng, (None, N, 20, 6), dtype)
    if kind == "numpy":
        Xk = np.asfortranarray(X)
        Ck = np.repeat(C, 2, axis=0)[::2]  # a strided view equal to C
        assert not Ck.flags.c_contiguous
    else:
        Xk = as_kind(kind, np.ascontiguousarray(X.T))[0].T  # transposed view
        Ck = as_kind(kind, np.repeat(C, 2, axis=0))[0][::2]
        assert not Xk.is_contiguous() and not Ck.is_contiguous()
    labels, sq_dist = ops.kmeans_assign(Xk, Ck)
    # CPU kinds: bitwise the numpy result; CUDA: bitwise the result for contiguous CUDA copies.
    contiguous = as_kind(kind, X, C) if kind == "cuda" else (X, C)
    ref_labels, ref_sq = (to_np(a) for a in ops.kmeans_assign(*contiguous))
    np.testing.assert_array_equal(to_np(labels), ref_labels, err_msg=f"seed={seed}")
    np.testing.assert_array_equal(to_np(sq_dist), ref_sq, err_msg=f"seed={seed}")
    assert_assign_matches(X, C, labels, sq_dist, seed=seed)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 50, 9, 7), (2, 257, 65, 130), (5, 1, 3, 2), (4, 600, 33, 9)],
                         ids=["B3", "B2_D130", "B5_N1", "B4_N600_K33"])
def test_assign_batched_equals_per_problem(shape, dtype, kind, rng, seed):
    """A batch of B problems gives bitwise the results of B separate calls."""
    X, C = random_problem(rng, shape, dtype)
    Xk, Ck = as_kind(kind, X, C)
    labels, sq_dist = ops.kmeans_assign(Xk, Ck)
    for b in range(shape[0]):
        lb, db = ops.kmeans_assign(Xk[b], Ck[b])
        np.testing.assert_array_equal(to_np(labels[b]), to_np(lb), err_msg=f"problem {b}; seed={seed}")
        np.testing.assert_array_equal(to_np(sq_dist[b]), to_np(db), err_msg=f"problem {b}; seed={seed}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", WRITE_ASSIGN_SHAPES.values(), ids=WRITE_ASSIGN_SHAPES.keys())
def test_core_assign_writes_every_output(shape, dtype, rng, seed):
    """The raw _core binding overwrites every pre-poisoned labels / sq_dist element."""
    B, N, K, D = shape
    X, C = random_problem(rng, shape, dtype)
    labels = np.full((B, N), -7, dtype=np.int64)
    sq_dist = np.full((B, N), np.nan, dtype=dtype)
    _core.kmeans_assign(X, C, labels, sq_dist)
    assert not (labels == -7).any(), f"labels left unwritten; seed={seed}"
    assert not np.isnan(sq_dist).any(), f"sq_dist left unwritten; seed={seed}"
    assert_assign_matches(X, C, labels, sq_dist, seed=seed)


def test_core_assign_rejects_bad_buffers(rng, seed):
    """The bindings check shapes and dtypes of the output buffers and never convert."""
    X, C = random_problem(rng, (1, 10, 3, 2), "float64")
    labels = np.empty((1, 10), np.int64)
    with pytest.raises(ValueError, match=r"\blabels\b"):
        _core.kmeans_assign(X, C, np.empty((1, 9), np.int64), np.empty((1, 10)))
    with pytest.raises(ValueError, match="sq_dist"):
        _core.kmeans_assign(X, C, labels, np.empty((1, 11)))
    with pytest.raises(TypeError):  # float32 output for float64 input: no overload matches
        _core.kmeans_assign(X, C, labels, np.empty((1, 10), np.float32))
    with pytest.raises(TypeError):  # non-contiguous X is not silently copied
        _core.kmeans_assign(np.asfortranarray(X[0])[None], C, labels, np.empty((1, 10)))


# --------------------------------------------------------------------------- tie-breaking


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [2, 33, 65])
def test_assign_all_centres_identical(K, dtype, kind, rng, seed):
    """K copies of the same centre: every point goes to index 0."""
    X = rng.standard_normal((77, 5)).astype(dtype)
    C = np.repeat(rng.standard_normal((1, 5)), K, axis=0).astype(dtype)
    labels, sq_dist = ops.kmeans_assign(*as_kind(kind, X, C))
    assert (to_np(labels) == 0).all(), f"seed={seed}: labels {np.unique(to_np(labels))}"
    assert_assign_matches(X, C, labels, sq_dist, seed=seed)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K,D", [(33, 2), (70, 9), (400, 130)], ids=["K33_D2", "K70_D9", "K400_D130"])
def test_assign_duplicate_centres_lowest_index(K, D, dtype, kind, rng, seed):
    """Identical centre rows (same lane, same panel, across panels, across centre blocks):
    points nearest to a duplicated centre get its lowest index, never a later copy."""
    C = rng.standard_normal((K, D))
    groups = [(0, 1), (3, K - 1), (K // 2, K // 2 + 1), (5, K // 2 + 16)]
    if K >= 400:
        groups += [(10, 390), (50, 150, 350)]
    for g in groups:
        C[list(g[1:])] = C[g[0]]
    C = C.astype(dtype)
    # Lowest index holding each row's value (groups may chain, so derive it from C itself).
    first = np.array([np.flatnonzero((C == C[k]).all(axis=1))[0] for k in range(K)])
    shadowed = np.flatnonzero(first != np.arange(K))
    lows = np.unique(first[shadowed])
    assert len(lows) >= 3, f"setup: duplicates {groups}"
    near = np.repeat(lows, 12)
    X = np.concatenate([C[near] + 1e-3 * rng.standard_normal((len(near), D)),
                        rng.standard_normal((40, D))]).astype(dtype)
    labels, sq_dist = ops.kmeans_assign(*as_kind(kind, X, C))
    labels = to_np(labels)
    hit = np.isin(labels, shadowed)
    assert not hit.any(), (f"seed={seed}: points labelled with a later duplicate "
                           f"{sorted(set(labels[hit].tolist()))}; lowest copies {first[shadowed].tolist()}")
    # Points whose nearest centre is a duplicated one: exactly the lowest copy (the copies'
    # distances are bitwise equal, so this is a pure tie-break, no rounding slack).
    ref_labels, _ = reference.kmeans_assign(X, C)
    tied = np.isin(ref_labels, lows)
    assert tied.sum() >= len(near) // 2, f"setup: too few points at duplicated centres; seed={seed}"
    np.testing.assert_array_equal(labels[tied], ref_labels[tied], err_msg=f"seed={seed} groups={groups}")
    assert_assign_matches(X, C, labels, sq_dist, seed=seed)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(None, 300, 33, 2), (None, 300, 65, 3), (2, 150, 40, 4), (2, 150, 65, 3),
                                   (None, 60, 400, 130)],
                         ids=["K33_D2", "K65_D3", "B2_K40_D4", "B2_K65_D3", "K400_D130"])
def test_assign_exact_equidistant_lowest_index(shape, dtype, kind, rng, seed):
    """Small-integer coordinates make every distance exact, so exact ties between distinct
    centres are common: the label must be exactly the reference's lowest-index argmin."""
    B, N, K, D = shape
    lead = () if B is None else (B,)
    X = rng.integers(-3, 4, size=lead + (N, D)).astype(dtype)
    C = rng.integers(-3, 4, size=lead + (K, D)).astype(dtype)
    ref_labels, ref_sq = reference.kmeans_assign(X, C)
    full = ((X[..., :, None, :].astype(np.float64) - C[..., None, :, :]) ** 2).sum(-1)
    n_ties = ((full == ref_sq[..., None]).sum(-1) > 1).sum()
    if D <= 4:
        assert n_ties > 0, f"seed={seed}: data has no exact ties; the test would be vacuous"
    labels, sq_dist = ops.kmeans_assign(*as_kind(kind, X, C))
    np.testing.assert_array_equal(to_np(labels), ref_labels, err_msg=f"seed={seed} ({n_ties} tied points)")
    np.testing.assert_array_equal(to_np(sq_dist).astype(np.float64), ref_sq, err_msg=f"seed={seed}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_assign_midpoint_between_two_centres(dtype, rng, seed):
    """x exactly midway between two distinct centres x + v and x - v (integer coordinates,
    so both distances are exactly ||v||^2): index 0 wins whichever of the two comes first.
    One problem per point, batched, with a far decoy centre after the pair."""
    N, D = 40, 3
    X = rng.integers(-20, 21, size=(N, D)).astype(np.float64)
    V = rng.integers(1, 4, size=(N, D)).astype(np.float64)
    decoy = X + 1000.0
    for sign in (1.0, -1.0):
        C = np.stack([X + sign * V, X - sign * V, decoy], axis=1).astype(dtype)  # (N, 3, D)
        Xb = X[:, None, :].astype(dtype)  # (N, 1, D)
        labels, sq_dist = ops.kmeans_assign(Xb, C)
        np.testing.assert_array_equal(labels, np.zeros((N, 1), np.int64), err_msg=f"seed={seed} sign={sign}")
        np.testing.assert_array_equal(sq_dist[:, 0], (V * V).sum(1).astype(dtype), err_msg=f"seed={seed}")
        # The same pairs in one shared problem: every point still picks the lower index.
        Cs = np.concatenate([C[:, 0], C[:, 1]]).astype(dtype)  # rows i and N + i
        labels, sq_dist = ops.kmeans_assign(Xb[:, 0], Cs)
        assert_assign_matches(Xb[:, 0], Cs, labels, sq_dist, seed=seed)


# =========================================================================== kmeans_update


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("return_means", [True, False], ids=["means", "sums"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,wmode", list(_with_wmodes(SHAPES)))
def test_update_matches_reference(shape, wmode, dtype, return_means, kind, rng, seed):
    B, _, K, D = shape
    X, labels, w = random_update_problem(rng, shape, wmode, dtype)
    Xk, lk, wk = as_kind(kind, X, labels, w)
    out, wsum = ops.kmeans_update(Xk, lk, K, wk, return_means=return_means)
    lead = () if B is None else (B,)
    check_kind(kind, out, dtype, lead + (K, D), seed=seed, what="centres/sums")
    check_kind(kind, wsum, dtype, lead + (K,), seed=seed, what="weights")
    # The reference takes (N,) weights for a batch as shared by every problem.
    w_ref = None if w is None else (np.broadcast_to(w, labels.shape) if B is not None else w)
    assert_update_matches(X, labels, K, w_ref, out, wsum, seed=seed, return_means=return_means,
                          context=f"wmode={wmode} kind={kind}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_update_many_points(dtype, kind, rng, seed):
    """Enough points for several update blocks (CPU) or many thread blocks per cluster
    (CUDA), with some empty clusters."""
    B, N, K, D = 2, 70_000, 37, 5
    X, labels, w = random_update_problem(rng, (B, N, K, D), "BN", dtype)
    out, wsum = ops.kmeans_update(*as_kind(kind, X, labels), K, as_kind(kind, w)[0], return_means=False)
    check_kind(kind, out, dtype, (B, K, D), seed=seed, what="sums")
    check_kind(kind, wsum, dtype, (B, K), seed=seed, what="weights")
    assert_update_matches(X, labels, K, w, out, wsum, seed=seed, return_means=False, context=f"kind={kind}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_update_many_waves(dtype, rng, seed):
    """A problem row so wide (K*D = 1.5M) that the blocks are summed in several waves."""
    B, N, K, D = 3, 3, 2, 750_000
    X = rng.standard_normal((B, N, D)).astype(dtype)
    labels = rng.integers(0, K, size=(B, N))
    labels[:, 0] = 0  # (the last cluster of a problem may or may not be empty)
    w = rng.uniform(0.5, 2.0, size=(B, N)).astype(dtype)
    sums, wsum = ops.kmeans_update(X, labels, K, w, return_means=False)
    assert_update_matches(X, labels, K, w, sums, wsum, seed=seed, return_means=False)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_update_empty_and_zero_weight_clusters(dtype, kind, rng, seed):
    """Clusters with no points, or whose points all have weight 0, get a row of exact zeros
    and weight 0 (never NaN), for means and sums alike."""
    N, K, D = 200, 10, 4
    X, _ = random_problem(rng, (None, N, K, D), dtype)
    labels = rng.choice([0, 2, 3, 5, 7], size=N)  # 1, 4, 6, 8, 9 empty
    w = rng.uniform(0.5, 1.5, size=N)
    w[labels == 3] = 0.0  # cluster 3 has points but no weight
    w = w.astype(dtype)
    for return_means in (True, False):
        out, wsum = ops.kmeans_update(*as_kind(kind, X, labels), K, as_kind(kind, w)[0], return_means=return_means)
        out, wsum = to_np(out), to_np(wsum)
        for k in (1, 3, 4, 6, 8, 9):
            assert wsum[k] == 0, f"cluster {k} weight {wsum[k]}; seed={seed}"
            assert (out[k] == 0).all(), f"cluster {k} row {out[k]}; seed={seed}"
        assert np.isfinite(out).all(), f"seed={seed}"
        assert (wsum[[0, 2, 5, 7]] > 0).all(), f"seed={seed}"
        assert_update_matches(X, labels, K, w, out, wsum, seed=seed, return_means=return_means)


@pytest.mark.parametrize("dtype", DTYPES)
def test_update_unit_weights_equal_no_weights(dtype, rng, seed):
    X, _ = random_problem(rng, (2, 300, 7, 5), dtype)
    labels = random_labels(rng, 2, 300, 7)
    a = ops.kmeans_update(X, labels, 7)
    b = ops.kmeans_update(X, labels, 7, np.ones(300, dtype))
    c = ops.kmeans_update(X, labels, 7, np.ones((2, 300), dtype))
    for got in (b, c):
        np.testing.assert_array_equal(got[0], a[0], err_msg=f"seed={seed}")
        np.testing.assert_array_equal(got[1], a[1], err_msg=f"seed={seed}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,wmode", [((3, 8300, 6, 3), "BN"), ((4, 600, 33, 9), None)],
                         ids=["B3_N8300-wBN", "B4_N600_K33-wNone"])
def test_update_batched_equals_per_problem(shape, wmode, dtype, kind, rng, seed):
    """A batch of B problems gives bitwise the results of B separate calls."""
    B, _, K, _ = shape
    X, labels, w = random_update_problem(rng, shape, wmode, dtype)
    Xk, lk, wk = as_kind(kind, X, labels, w)
    sums, wsum = ops.kmeans_update(Xk, lk, K, wk, return_means=False)
    for b in range(B):
        sb, wb = ops.kmeans_update(Xk[b], lk[b], K, None if wk is None else wk[b], return_means=False)
        np.testing.assert_array_equal(to_np(sums[b]), to_np(sb), err_msg=f"problem {b}; seed={seed}")
        np.testing.assert_array_equal(to_np(wsum[b]), to_np(wb), err_msg=f"problem {b}; seed={seed}")


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", WRITE_UPDATE_SHAPES.values(), ids=WRITE_UPDATE_SHAPES.keys())
def test_core_update_writes_every_output(shape, dtype, weighted, rng, seed):
    """The raw _core binding overwrites every pre-poisoned sums / wsum element, empty
    clusters included (sum 0, weight 0)."""
    B, _, K, D = shape
    X, labels, w = random_update_problem(rng, shape, "BN" if weighted else None, dtype)
    sums = np.full((B, K, D), np.nan, dtype=dtype)
    wsum = np.full((B, K), np.nan, dtype=dtype)
    _core.kmeans_update(X, labels, w, sums, wsum)
    assert not np.isnan(sums).any(), f"sums left unwritten; seed={seed}"
    assert not np.isnan(wsum).any(), f"wsum left unwritten; seed={seed}"
    counts = np.stack([np.bincount(l, minlength=K) for l in labels])
    assert K < 3 or (counts == 0).any(), "setup: expected some empty clusters"
    assert_update_matches(X, labels, K, w, sums, wsum, seed=seed, return_means=False)


@pytest.mark.parametrize("bad", [-1, 5, 2**40, -(2**40)])
def test_core_update_rejects_out_of_range_labels(bad, rng, seed):
    """The kernel itself never indexes out of bounds: bad labels raise ValueError."""
    X = rng.standard_normal((1, 20, 3))
    labels = rng.integers(0, 5, size=(1, 20))
    labels[0, rng.integers(0, 20)] = bad
    sums = np.full((1, 5, 3), np.nan)
    wsum = np.full((1, 5), np.nan)
    with pytest.raises(ValueError, match=r"\blabels\b"):
        _core.kmeans_update(X, labels, None, sums, wsum)


# =========================================================================== kmeans_lloyd_step


LLOYD_SHAPES = {
    "N1_K1_D1": (None, 1, 1, 1),
    "N257_K33": (None, 257, 33, 7),
    "N8300_blocks": (None, 8300, 20, 3),
    "B3_K65_D130": (3, 100, 65, 130),
    "B2_K33>N": (2, 9, 33, 2),
    "B2_N3000_K65": (2, 3000, 65, 7),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,wmode", list(_with_wmodes(LLOYD_SHAPES)))
def test_lloyd_step_equals_assign_then_update(shape, dtype, wmode, kind, rng, seed):
    """kmeans_lloyd_step is bitwise kmeans_assign followed by kmeans_update of its labels."""
    B, N, K, D = shape
    X, C = random_problem(rng, shape, dtype)
    w = random_weights(rng, B, N, wmode, dtype)
    Xk, Ck, wk = as_kind(kind, X, C, w)
    for return_means in (True, False):
        labels, sq_dist, out, wsum = ops.kmeans_lloyd_step(Xk, Ck, wk, return_means=return_means)
        l2, d2 = ops.kmeans_assign(Xk, Ck)
        o2, w2 = ops.kmeans_update(Xk, l2, K, wk, return_means=return_means)
        lead = () if B is None else (B,)
        check_kind(kind, labels, "int64", lead + (N,), seed=seed, what="labels")
        check_kind(kind, sq_dist, dtype, lead + (N,), seed=seed, what="sq_dist")
        check_kind(kind, out, dtype, lead + (K, D), seed=seed, what="centres/sums")
        check_kind(kind, wsum, dtype, lead + (K,), seed=seed, what="weights")
        for name, a, b in [("labels", labels, l2), ("sq_dist", sq_dist, d2), ("out", out, o2), ("wsum", wsum, w2)]:
            np.testing.assert_array_equal(to_np(a), to_np(b), err_msg=f"{name} return_means={return_means}; seed={seed}")
    assert_assign_matches(X, C, labels, sq_dist, seed=seed)
    w_ref = None if w is None else np.broadcast_to(w, to_np(labels).shape)
    assert_update_matches(X, to_np(labels), K, w_ref, out, wsum, seed=seed, return_means=False)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 257, 65, 7), (2, 8193, 40, 3), (3, 10, 33, 130)],
                         ids=["N1_K1_D1", "N257_K65", "B2_N8193", "B3_K33>N_D130"])
def test_core_lloyd_step_writes_every_output(shape, dtype, weighted, rng, seed):
    B, N, K, D = shape
    X, C = random_problem(rng, shape, dtype)
    w = random_weights(rng, B, N, "BN", dtype) if weighted else None
    labels = np.full((B, N), -7, np.int64)
    sq_dist = np.full((B, N), np.nan, dtype)
    sums = np.full((B, K, D), np.nan, dtype)
    wsum = np.full((B, K), np.nan, dtype)
    _core.kmeans_lloyd_step(X, C, w, labels, sq_dist, sums, wsum)
    for name, a in [("labels", labels == -7), ("sq_dist", np.isnan(sq_dist)), ("sums", np.isnan(sums)), ("wsum", np.isnan(wsum))]:
        assert not a.any(), f"{name} left unwritten; seed={seed}"
    assert_assign_matches(X, C, labels, sq_dist, seed=seed)
    assert_update_matches(X, labels, K, w, sums, wsum, seed=seed, return_means=False)


# =========================================================================== determinism


def _all_ops(X, C, w, K):
    labels, sq_dist = ops.kmeans_assign(X, C)
    means, wsum = ops.kmeans_update(X, labels, K, w)
    sums, wsum2 = ops.kmeans_update(X, labels, K, w, return_means=False)
    step = ops.kmeans_lloyd_step(X, C, w, return_means=False)
    return [labels, sq_dist, means, wsum, sums, wsum2, *step]


@pytest.mark.parametrize("dtype", DTYPES)
def test_results_independent_of_thread_count(dtype, rng, seed):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    N, K, D = 20_000, 50, 16  # several assignment chunks and update blocks
    X, C = random_problem(rng, (None, N, K, D), dtype)
    w = rng.uniform(0, 2, N).astype(dtype)
    results = {}
    for threads in (1, 2):
        with threadpoolctl.threadpool_limits(threads, user_api="openmp"):
            assert _core.openmp_max_threads() == threads, "threadpoolctl did not reach genfast's OpenMP"
            results[threads] = _all_ops(X, C, w, K)
    for i, (a, b) in enumerate(zip(results[1], results[2])):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b, err_msg=f"output {i} differs between 1 and 2 threads; seed={seed}")


# =========================================================================== inputs untouched


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_inputs_not_modified(dtype, kind, rng, seed):
    B, N, K, D = 2, 300, 9, 5
    X, C = random_problem(rng, (B, N, K, D), dtype)
    labels = random_labels(rng, B, N, K)
    w = random_weights(rng, B, N, "BN", dtype)
    copies = [a.copy() for a in (X, C, labels, w)]
    Xk, Ck, lk, wk = as_kind(kind, X, C, labels, w)
    ops.kmeans_assign(Xk, Ck)
    ops.kmeans_update(Xk, lk, K, wk)
    ops.kmeans_update(Xk, lk, K, wk[0], return_means=False)
    ops.kmeans_lloyd_step(Xk, Ck, wk)
    ops.kmeans_lloyd_step(Xk, Ck, wk[0])
    ops.kmeans_assign(Xk[0], Ck[0])
    for name, before, after in zip(["X", "C", "labels", "sample_weight"], copies, (Xk, Ck, lk, wk)):
        np.testing.assert_array_equal(to_np(after), before, err_msg=f"{name} modified; seed={seed}")


# =========================================================================== validation


def _np_problem():
    rng = np.random.default_rng(0)  # values are irrelevant here: only the errors are tested
    X = rng.standard_normal((10, 3))
    C = X[:4].copy()
    labels = np.arange(10) % 4
    return X, C, labels


def _with(a, index, value):
    a = np.array(a, dtype=np.float64)
    a[index] = value
    return a


ASSIGN_ERRORS = {
    "nan_X": (lambda X, C: (_with(X, (2, 1), np.nan), C), ValueError, r"\bX\b"),
    "inf_X": (lambda X, C: (_with(X, (0, 0), -np.inf), C), ValueError, r"\bX\b"),
    "nan_C": (lambda X, C: (X, _with(C, (1, 2), np.nan)), ValueError, r"\bC\b"),
    "inf_C": (lambda X, C: (X, _with(C, (3, 0), np.inf)), ValueError, r"\bC\b"),
    "X_1d": (lambda X, C: (X[:, 0], C), ValueError, r"\bX\b"),
    "X_4d": (lambda X, C: (X[None, None], C), ValueError, r"\bX\b"),
    "C_1d": (lambda X, C: (X, C[0]), ValueError, r"\bC\b"),
    "C_3d_X_2d": (lambda X, C: (X, C[None]), ValueError, r"\bC\b"),
    "C_2d_X_3d": (lambda X, C: (X[None], C), ValueError, r"\bC\b"),
    "D_mismatch": (lambda X, C: (X, C[:, :2]), ValueError, "C has 2 features but X has 3"),
    "batch_mismatch": (lambda X, C: (np.stack([X, X]), np.stack([C, C, C])), ValueError, r"\bC\b.*batch size"),
    "empty_C": (lambda X, C: (X, C[:0]), ValueError, r"\bC\b"),
    "empty_X": (lambda X, C: (X[:0], C), ValueError, r"\bX\b"),
    "D0": (lambda X, C: (X[:, :0], C[:, :0]), ValueError, r"\bX\b"),
    "str_X": (lambda X, C: (X.astype(str), C), TypeError, r"\bX\b"),
    "complex_X": (lambda X, C: (X.astype(complex), C), TypeError, r"\bX\b"),
    "object_X": (lambda X, C: (X.astype(object), C), TypeError, r"\bX\b"),
    "str_C": (lambda X, C: (X, C.astype(str)), TypeError, r"\bC\b"),
    "complex_C": (lambda X, C: (X, C.astype(np.complex64)), TypeError, r"\bC\b"),
}


@pytest.mark.parametrize("case", ASSIGN_ERRORS.values(), ids=ASSIGN_ERRORS.keys())
def test_assign_rejects_bad_input(case):
    make, exc, match = case
    X, C = make(*_np_problem()[:2])
    with pytest.raises(exc, match=match):
        ops.kmeans_assign(X, C)
    with pytest.raises(exc, match=match):
        ops.kmeans_lloyd_step(X, C)


UPDATE_ERRORS = {
    "nan_X": (lambda X, l: dict(X=_with(X, (1, 1), np.nan)), ValueError, r"\bX\b"),
    "X_1d": (lambda X, l: dict(X=X[:, 0]), ValueError, r"\bX\b"),
    "str_X": (lambda X, l: dict(X=X.astype(str)), TypeError, r"\bX\b"),
    "complex_X": (lambda X, l: dict(X=X.astype(complex)), TypeError, r"\bX\b"),
    "empty_X": (lambda X, l: dict(X=X[:0], labels=l[:0]), ValueError, r"\bX\b"),
    "label_too_big": (lambda X, l: dict(labels=np.where(l == 2, 4, l)), ValueError, r"\blabels\b"),
    "label_negative": (lambda X, l: dict(labels=np.where(l == 2, -1, l)), ValueError, r"\blabels\b"),
    "labels_float": (lambda X, l: dict(labels=l.astype(float)), TypeError, r"\blabels\b"),
    "labels_bool": (lambda X, l: dict(labels=l.astype(bool)), TypeError, r"\blabels\b"),
    "labels_str": (lambda X, l: dict(labels=l.astype(str)), TypeError, r"\blabels\b"),
    "labels_short": (lambda X, l: dict(labels=l[:9]), ValueError, r"\blabels\b"),
    "labels_2d": (lambda X, l: dict(labels=l[None]), ValueError, r"\blabels\b"),
    "labels_batched_wrong": (lambda X, l: dict(X=np.stack([X, X]), labels=l), ValueError, r"\blabels\b"),
    "n_clusters_0": (lambda X, l: dict(n_clusters=0), ValueError, r"\bn_clusters\b"),
    "n_clusters_float": (lambda X, l: dict(n_clusters=4.0), TypeError, r"\bn_clusters\b"),
    "weight_negative": (lambda X, l: dict(sample_weight=_with(np.ones(10), 3, -0.5)), ValueError, r"\bsample_weight\b"),
    "weight_nan": (lambda X, l: dict(sample_weight=_with(np.ones(10), 3, np.nan)), ValueError, r"\bsample_weight\b"),
    "weight_shape": (lambda X, l: dict(sample_weight=np.ones(9)), ValueError, r"\bsample_weight\b"),
    "weight_batched_shape": (lambda X, l: dict(X=np.stack([X, X]), labels=np.stack([l, l]),
                                               sample_weight=np.ones((3, 10))), ValueError, r"\bsample_weight\b"),
    "weight_str": (lambda X, l: dict(sample_weight=np.ones(10).astype(str)), TypeError, r"\bsample_weight\b"),
}


@pytest.mark.parametrize("case", UPDATE_ERRORS.values(), ids=UPDATE_ERRORS.keys())
def test_update_rejects_bad_input(case):
    make, exc, match = case
    X, _, labels = _np_problem()
    args = dict(X=X, labels=labels, n_clusters=4, sample_weight=None)
    args.update(make(X, labels))
    with pytest.raises(exc, match=match):
        ops.kmeans_update(args["X"], args["labels"], args["n_clusters"], args["sample_weight"])


def test_lloyd_step_rejects_bad_weights():
    X, C, _ = _np_problem()
    with pytest.raises(ValueError, match=r"\bsample_weight\b"):
        ops.kmeans_lloyd_step(X, C, -np.ones(10))
    with pytest.raises(ValueError, match=r"\bsample_weight\b"):
        ops.kmeans_lloyd_step(X, C, np.ones(11))


def test_mixing_numpy_and_torch_is_rejected():
    torch = torch_or_skip()
    X, C, labels = _np_problem()
    tX, tC, tl = torch.from_numpy(X), torch.from_numpy(C), torch.from_numpy(labels)
    with pytest.raises(ValueError, match=r"\bC\b"):
        ops.kmeans_assign(X, tC)
    with pytest.raises(ValueError, match=r"\bC\b"):
        ops.kmeans_assign(tX, C)
    with pytest.raises(ValueError, match=r"\blabels\b"):
        ops.kmeans_update(X, tl, 4)
    with pytest.raises(ValueError, match=r"\blabels\b"):
        ops.kmeans_update(tX, labels, 4)
    with pytest.raises(ValueError, match=r"\bsample_weight\b"):
        ops.kmeans_update(X, labels, 4, torch.ones(10, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\bsample_weight\b"):
        ops.kmeans_update(tX, tl, 4, np.ones(10))
    with pytest.raises(ValueError, match=r"\bC\b"):
        ops.kmeans_lloyd_step(tX, C)


def test_torch_bad_input_is_rejected():
    torch = torch_or_skip()
    X = torch.randn(10, 3, dtype=torch.float64)
    C = X[:4].clone()
    with pytest.raises(TypeError, match=r"\bX\b"):
        ops.kmeans_assign(X.to(torch.complex64), C)
    with pytest.raises(ValueError, match=r"\bC\b"):
        ops.kmeans_assign(X, torch.full((4, 3), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\bX\b"):
        ops.kmeans_assign(X[:, 0], C)
    with pytest.raises(TypeError, match=r"\blabels\b"):
        ops.kmeans_update(X, torch.zeros(10), 4)
    with pytest.raises(ValueError, match=r"\blabels\b"):
        ops.kmeans_update(X, torch.full((10,), 4), 4)
    with pytest.raises(ValueError, match=r"\bsample_weight\b"):
        ops.kmeans_update(X, torch.zeros(10, dtype=torch.int64), 4, -torch.ones(10, dtype=torch.float64))


def test_torch_requires_grad_input_is_detached(rng, seed):
    torch = torch_or_skip()
    Xn = rng.standard_normal((30, 4)).astype(np.float32)
    X = torch.from_numpy(Xn).requires_grad_(True)
    C = torch.from_numpy(Xn[:5].copy()).requires_grad_(True)
    labels, sq_dist = ops.kmeans_assign(X, C)
    assert not sq_dist.requires_grad
    means, _ = ops.kmeans_update(X, labels, 5)
    assert not means.requires_grad
    assert_assign_matches(Xn, Xn[:5], labels, sq_dist, seed=seed)


@pytest.mark.parametrize("op", ["assign", "lloyd_step"])
@pytest.mark.parametrize("D", [1, 2, 64])
def test_float32_overflowing_distances_are_rejected(op, D):
    """Found by the property tests: float32 points of magnitude 1e38 made the expanded form
    ||c||^2 - 2 x.c overflow, so a point equal to a centre got another centre at distance inf.
    Values whose squared distances can overflow (max |v| > sqrt(max / (4 D))) now raise a
    ValueError naming the argument; just below that limit the nearest centre is found."""
    call = ops.kmeans_assign if op == "assign" else ops.kmeans_lloyd_step
    limit = np.sqrt(np.finfo(np.float32).max / (4 * D))
    big = np.zeros((2, D), np.float32)
    big[0, 0] = 1e38
    with pytest.raises(ValueError, match=r"^X holds values up to 1e\+38 .*float64"):
        call(big, np.zeros((1, D), np.float32))
    with pytest.raises(ValueError, match=r"^C holds values up to 1e\+38"):
        call(np.zeros((1, D), np.float32), big)
    X = np.zeros((2, D), np.float32)
    X[0, 0] = np.nextafter(np.float32(limit), np.float32(0))  # the largest accepted magnitude
    X[1, 0] = -X[0, 0]
    labels, sq_dist = call(X, X)[:2]
    assert labels.tolist() == [0, 1] and sq_dist.tolist() == [0, 0]
    assert call(X.astype(np.float64) * 1e10, X.astype(np.float64))[0].tolist() == [0, 1]  # float64: far larger


def test_sample_weight_whose_total_overflows_the_dtype_is_rejected():
    """Found by the property tests: float32 weights [1e38, 3e38] in one cluster summed to inf,
    and the means came out inf / inf = NaN. The weights' total must fit X's dtype."""
    X = np.ones((2, 1), np.float32)
    w = np.array([1e38, 3e38], np.float32)
    with pytest.raises(ValueError, match=r"^sample_weight sums to 4e\+38, beyond float32's range"):
        ops.kmeans_update(X, np.zeros(2, np.int64), 1, w)
    means, weights = ops.kmeans_update(X.astype(np.float64), np.zeros(2, np.int64), 1, w.astype(np.float64))
    assert means[0, 0] == 1.0 and np.isclose(weights[0], 4e38)
