"""Threads: the kernels release the GIL, concurrent calls equal sequential ones, results do not
depend on OMP_NUM_THREADS, threadpoolctl limits reach genfast's OpenMP, and genfast adds no
thread pool of its own on top of BLAS's.

No timing assertions: the GIL test only asks whether another Python thread made progress
while a kernel ran, which is all-or-nothing (a kernel holding the GIL freezes it entirely).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import genfast
from genfast import _core, ops

# --------------------------------------------------------------------------- each family's main op


def kmeans_problem(rng, N=200_000, K=256, D=32):
    X = rng.standard_normal((N, D)).astype(np.float32)
    return (X, X[rng.choice(N, K, replace=False)].copy())


def kmeans_op(X, C):
    return ops.kmeans_lloyd_step(X, C, check_finite=False)


def gmm_problem(rng, N=100_000, K=16, D=16):
    X = rng.standard_normal((N, D))
    weights = np.full(K, 1.0 / K)
    means = rng.standard_normal((K, D))
    # Upper-triangular precision Cholesky factors with a positive diagonal (scikit-learn's).
    prec = np.triu(rng.standard_normal((K, D, D)) * 0.1, 1) + np.eye(D) * rng.uniform(0.5, 2.0, (K, 1, 1))
    return (X, weights, means, prec)


def gmm_op(X, weights, means, prec):
    return ops.gmm_em_step(X, weights, means, prec, "full", check_finite=False)


def elbo_problem(rng, B=16_384, D=784, L=32):
    x = (rng.random((B, D)) < 0.3).astype(np.float32)
    logits = rng.standard_normal((B, D)).astype(np.float32)
    mu = rng.standard_normal((B, L)).astype(np.float32)
    logvar = (0.3 * rng.standard_normal((B, L))).astype(np.float32)
    return (x, logits, mu, logvar)


def elbo_op(x, logits, mu, logvar):
    return ops.elbo(x, logits, mu, logvar, gradients=True, check_finite=False)


def mc_problem(rng, B=256, m=128, D=784):
    x = (rng.random((B, D)) < 0.3).astype(np.float32)
    logits = rng.standard_normal((B, m, D)).astype(np.float32)
    log_prior = rng.standard_normal((B, m)).astype(np.float32)
    log_proposal = rng.standard_normal((B, m)).astype(np.float32)
    return (x, logits, log_prior, log_proposal)


def mc_op(x, logits, log_prior, log_proposal):
    log_w = ops.log_importance_weights(x, logits, log_prior, log_proposal, check_finite=False)
    return (log_w, *ops.logmeanexp_stats(log_w))


FAMILIES = {
    "kmeans_lloyd_step": (kmeans_problem, kmeans_op),
    "gmm_em_step": (gmm_problem, gmm_op),
    "elbo": (elbo_problem, elbo_op),
    "mc_importance_weights": (mc_problem, mc_op),
}


def flatten(result):
    """The output arrays of an op as a flat list (ops return arrays, tuples and dicts)."""
    if isinstance(result, np.ndarray):
        return [result]
    if isinstance(result, dict):
        return [a for key in sorted(result) for a in flatten(result[key])]
    if isinstance(result, (tuple, list)):
        return [a for r in result for a in flatten(r)]
    return [np.asarray(result)]


# --------------------------------------------------------------------------- (a) the GIL is released


@pytest.mark.parametrize("family", FAMILIES)
def test_kernel_releases_the_gil(rng, seed, family):
    """While one thread is inside the kernel, a pure-Python loop in this thread keeps going.

    The loop stamps the time every few iterations; the worker stamps the start and end of one
    kernel call (~0.1-0.5 s at these sizes). With the GIL held for the whole call there would be
    no stamp inside that window (switch requests are only honoured between bytecodes), so the
    largest gap between stamps inside it would be the window itself. Checked to fail on a
    call that holds the GIL (bytes.find over 400 MB)."""
    make, op = FAMILIES[family]
    args = make(rng)
    op(*args)  # warm up (first-touch allocations, OpenMP pool)
    window = {}

    def worker():
        window["start"] = time.perf_counter()
        op(*args)
        window["end"] = time.perf_counter()

    stamps = []
    thread = threading.Thread(target=worker)
    thread.start()
    count = 0
    while thread.is_alive():
        count += 1
        if count % 64 == 0:
            stamps.append(time.perf_counter())
    thread.join()
    start, end = window["start"], window["end"]
    inside = np.array([start] + [t for t in stamps if start < t < end] + [end])
    largest_gap = np.diff(inside).max()
    assert len(inside) > 10 and largest_gap < 0.5 * (end - start), (
        f"{family}: this thread stamped {len(inside) - 2} times during a {end - start:.3f} s kernel "
        f"window (largest gap {largest_gap:.3f} s): the kernel holds the GIL; seed={seed}")


# --------------------------------------------------------------------------- (b) concurrent == sequential


@pytest.mark.parametrize("family", FAMILIES)
def test_concurrent_calls_match_sequential_calls(seed, family):
    make, op = FAMILIES[family]
    problems = [make(np.random.default_rng([seed, i]), **small_sizes(family)) for i in range(4)]
    sequential = [flatten(op(*args)) for args in problems]
    barrier = threading.Barrier(4)

    def call(args):
        barrier.wait()  # all four enter the kernel together
        return flatten(op(*args))

    for attempt in range(3):
        with ThreadPoolExecutor(4) as pool:
            concurrent = list(pool.map(call, problems))
        for i, (got, expected) in enumerate(zip(concurrent, sequential)):
            assert len(got) == len(expected)
            for j, (a, b) in enumerate(zip(got, expected)):
                assert np.array_equal(a, b, equal_nan=True), (
                    f"{family}: thread {i} output {j} differs from the sequential call "
                    f"(attempt {attempt}); seed={seed}")


def small_sizes(family):
    """Problem sizes for the concurrency test: several OpenMP chunks/blocks each, but quick."""
    return {"kmeans_lloyd_step": dict(N=20_000, K=33, D=7), "gmm_em_step": dict(N=5000, K=5, D=6),
            "elbo": dict(B=300, D=100, L=7), "mc_importance_weights": dict(B=20, m=70, D=50)}[family]


# --------------------------------------------------------------------------- (c) OMP_NUM_THREADS=1 vs 2

FIT_SCRIPT = r"""
import json, sys
import numpy as np
import genfast
rng = np.random.default_rng(12345)
# Blobs plus noise, 30,000 rows: several assignment chunks and update blocks per thread.
centres = rng.standard_normal((6, 5)) * 4
X = (centres[rng.integers(0, 6, 30_000)] + rng.standard_normal((30_000, 5))).astype(sys.argv[2])
km = genfast.KMeans(n_clusters=8, n_init=2, random_state=7).fit(X)
gm = genfast.GaussianMixture(n_components=4, covariance_type="full", max_iter=20, random_state=7).fit(X)
np.savez(sys.argv[1], labels=km.labels_, inertia=km.inertia_, centers=km.cluster_centers_,
         n_iter=km.n_iter_, weights=gm.weights_, means=gm.means_, covariances=gm.covariances_,
         precisions_cholesky=gm.precisions_cholesky_, lower_bound=gm.lower_bound_)
print(json.dumps(genfast.config()["cpu"]["openmp_threads"]))
"""


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_estimators_are_bitwise_identical_for_1_and_2_openmp_threads(tmp_path, dtype):
    results = {}
    for threads in (1, 2):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        out = tmp_path / f"fit{threads}.npz"
        run = subprocess.run([sys.executable, "-c", FIT_SCRIPT, str(out), dtype], env=env,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout.strip().splitlines()[-1]) == threads, "OMP_NUM_THREADS not honoured"
        results[threads] = dict(np.load(out))
    for key, one in results[1].items():
        two = results[2][key]
        assert one.dtype == two.dtype and np.array_equal(one, two), (
            f"{key} ({dtype}) differs between OMP_NUM_THREADS=1 and 2: max |diff| "
            f"{np.max(np.abs(one.astype(np.float64) - two.astype(np.float64)))}")


# --------------------------------------------------------------------------- (d) threadpoolctl


def test_threadpoolctl_limits_reach_genfast_openmp():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    # The OpenMP runtime _core uses is one threadpoolctl manages.
    libs = threadpoolctl.threadpool_info()
    assert any(lib["user_api"] == "openmp" for lib in libs), f"threadpoolctl sees no OpenMP runtime: {libs}"
    before = genfast.config()["cpu"]["openmp_threads"]
    with threadpoolctl.threadpool_limits(1):
        assert genfast.config()["cpu"]["openmp_threads"] == 1
        assert _core.openmp_max_threads() == 1
    assert genfast.config()["cpu"]["openmp_threads"] == before, "the limit was not lifted on exit"


def test_threadpoolctl_limit_applies_to_the_calling_thread_only():
    """OpenMP's thread count is a per-thread setting: a limit set in one Python thread does not
    reach kernels called from another (documented; set the limit in the thread that calls)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    seen = {}
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        def worker():
            seen["other"] = _core.openmp_max_threads()
            with threadpoolctl.threadpool_limits(1, user_api="openmp"):
                seen["other_limited"] = _core.openmp_max_threads()
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        assert _core.openmp_max_threads() == 1
    assert seen["other_limited"] == 1
    assert seen["other"] == _core.openmp_max_threads()


# --------------------------------------------------------------------------- (e) no oversubscription

THREADS_SCRIPT = r"""
import json, os, sys
import numpy as np
import genfast
from genfast import ops
def tasks():
    return len(os.listdir("/proc/self/task"))
rng = np.random.default_rng(0)
A = rng.standard_normal((600, 600))
A @ A  # BLAS starts its thread pool
X = rng.standard_normal((50_000, 8)).astype(np.float32)
after_blas = tasks()
for _ in range(3):
    ops.kmeans_lloyd_step(X, X[:40].copy())
    genfast.GaussianMixture(3, max_iter=3, random_state=0).fit(X[:5000])
    A @ A
print(json.dumps({"after_blas": after_blas, "after_genfast": tasks(),
                  "openmp": genfast.config()["cpu"]["openmp_threads"]}))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
@pytest.mark.parametrize("threads", [1, 2])
def test_genfast_adds_only_its_openmp_pool_to_a_blas_process(threads):
    """genfast's kernels never call BLAS, and its Python layer calls numpy (BLAS) only between
    kernel calls in the same thread, so the BLAS pool and genfast's OpenMP pool never compute at
    once. What genfast adds to a process is its OpenMP pool (OMP_NUM_THREADS - 1 workers), made
    once and reused: not a pool per call, and none at all with one thread."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS="2", MKL_NUM_THREADS="2")
    run = subprocess.run([sys.executable, "-c", THREADS_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    counts = json.loads(run.stdout.strip().splitlines()[-1])
    assert counts["openmp"] == threads
    added = counts["after_genfast"] - counts["after_blas"]
    assert 0 <= added <= threads - 1, f"genfast added {added} threads with OMP_NUM_THREADS={threads}: {counts}"


def test_cpu_kernels_never_call_blas():
    """No BLAS symbol is imported by _core: its kernels cannot run inside (or start) a BLAS pool."""
    nm = subprocess.run(["nm", "-D", "--undefined-only", _core.__file__], capture_output=True, text=True)
    if nm.returncode != 0:
        pytest.skip(f"nm unavailable: {nm.stderr.strip()}")
    blas = [line.split()[-1] for line in nm.stdout.splitlines()
            if any(name in line for name in ("gemm", "gemv", "cblas_", "potrf", "trsm", "syrk"))]
    assert not blas, f"_core imports BLAS/LAPACK symbols {blas}"
    assert "omp_get_max_threads" in nm.stdout or "GOMP_parallel" in nm.stdout, "_core does not use OpenMP?"
