#!/usr/bin/env python
"""Peak memory benchmark: extra resident memory of genfast's estimators beyond their input.

Issue 7 asks that KMeans.fit and GaussianMixture.score_samples on N=20,000,000 x D=16 float32
(1.28 GB) use no more than 25% extra resident memory beyond the input. Each case runs in a
fresh Python process, so that what one case allocated (or left to the allocator's free lists)
never hides or inflates another's peak:

1. import genfast and run the case once on a tiny input (loads every library, starts the
   OpenMP and BLAS thread pools: the interpreter's fixed costs, not the estimator's);
2. create X (N, D) float32 (and, for the mixture, fit the model on its first rows);
3. read the resident size (VmRSS) as the baseline, reset the kernel's peak-RSS mark
   (``echo 5 > /proc/self/clear_refs`` resets VmHWM), run the measured call, read VmHWM;
4. extra = VmHWM - baseline: every byte the call had resident at its peak beyond X, including
   what it returns and keeps (for KMeans.fit the (N,) int64 labels_ = 8 N bytes).

    python benchmarks/bench_memory.py                  # N=20,000,000 D=16 (needs ~3 GB free)
    python benchmarks/bench_memory.py --n 2e6          # smaller
    python benchmarks/bench_memory.py --cases kmeans_fit --no-json

Cases: kmeans_fit (KMeans(n_clusters=16, n_init=1, max_iter=5, k-means++).fit(X)),
gmm_score_samples and gmm_predict (GaussianMixture(16, 'full') fit on 100,000 rows, then on
all of X), gmm_fit (GaussianMixture(16, 'full', init_params='random', max_iter=2).fit(X): its
initial responsibilities, a full (N, 16) matrix until this case was added, and two EM steps).
Linux only (reads /proc/self/status).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from genfast.bench import _harness as H

NAME = "memory"
CASES = ["kmeans_fit", "gmm_score_samples", "gmm_predict", "gmm_fit"]
#: The issue's budget: extra peak RSS at most this fraction of the input's bytes.
BUDGET_FRACTION = 0.25
N_CLUSTERS = 16
KMEANS_MAX_ITER = 5
GMM_FIT_MAX_ITER = 2
GMM_FIT_ROWS = 100_000


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _quietly(fit, X):
    """fit(X) without its ConvergenceWarning (max_iter is small on purpose)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fit(X)


def _make_case(case: str, X):
    """The call to measure on X (anything it needs that is not part of it, such as the
    mixture's fit on a sample, happens here, before the baseline)."""
    import genfast

    if case == "kmeans_fit":
        est = genfast.KMeans(n_clusters=N_CLUSTERS, n_init=1, max_iter=KMEANS_MAX_ITER, random_state=0)
        return lambda: est.fit(X)
    if case == "gmm_fit":
        est = genfast.GaussianMixture(N_CLUSTERS, covariance_type="full", init_params="random",
                                      max_iter=GMM_FIT_MAX_ITER, tol=0.0, random_state=0)
        return lambda: _quietly(est.fit, X)
    gm = genfast.GaussianMixture(N_CLUSTERS, covariance_type="full", max_iter=20, random_state=0)
    gm.fit(X[:GMM_FIT_ROWS])
    if case == "gmm_score_samples":
        return lambda: gm.score_samples(X)
    if case == "gmm_predict":
        return lambda: gm.predict(X)
    raise ValueError(f"unknown case {case!r}; choose from {CASES}")


def measure_here(case: str, n: int, d: int, seed: int = 0) -> dict:
    """Runs `case` in this process (call it in a fresh one) and returns its peak figures."""
    import numpy as np

    warm = np.random.default_rng(seed).standard_normal((max(4 * GMM_FIT_ROWS // 100, 64), d), dtype=np.float32)
    _make_case(case, warm)()  # libraries loaded, thread pools started
    X = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    call = _make_case(case, X)
    baseline = _status_kib("VmRSS") * 1024
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # VmHWM := VmRSS
    t0 = time.perf_counter()
    call()
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM") * 1024
    extra = peak - baseline
    return {"case": case, "n": n, "d": d, "dtype": "float32", "input_bytes": X.nbytes,
            "baseline_rss_bytes": baseline, "peak_rss_bytes": peak, "extra_peak_bytes": extra,
            "extra_fraction_of_input": extra / X.nbytes, "seconds": seconds}


def measure(case: str, n: int, d: int = 16, seed: int = 0, timeout: float = 1800) -> dict:
    """measure_here in a fresh Python process (the same interpreter, OMP settings inherited)."""
    code = (f"import sys, json; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
            f"import bench_memory; print(json.dumps(bench_memory.measure_here({case!r}, {n}, {d}, {seed})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{case} at n={n} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


COLUMNS = [
    H.Column("case", "case", align="<"),
    H.Column("N", "n", "{:,}"),
    H.Column("input MB", "input_bytes", lambda v: f"{v / 1e6:.0f}"),
    H.Column("extra peak MB", "extra_peak_bytes", lambda v: f"{v / 1e6:.1f}"),
    H.Column("extra/input", "extra_fraction_of_input", "{:.3f}"),
    H.Column("budget", "within_budget", lambda v: "ok" if v else "OVER"),
    H.Column("s", "seconds", "{:.1f}"),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=H._int_arg, default=20_000_000, help="rows of X (default 20,000,000)")
    p.add_argument("--d", type=H._int_arg, default=16, help="features (default 16)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(H.RESULTS_DIR), help="folder for the JSON results")
    p.add_argument("--no-json", action="store_true", help="print the table only")
    args = p.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    for c in cases:
        if c not in CASES:
            p.error(f"unknown case {c!r}; choose from {','.join(CASES)}")
    threads = len(os.sched_getaffinity(0))
    warn = H.busy_warning(threads)
    if warn:
        print(warn)
    record = H.base_record(NAME, "cpu")
    record["settings"] = {
        "n": args.n, "d": args.d, "dtype": "float32", "seed": args.seed, "cases": cases,
        "n_clusters": N_CLUSTERS, "kmeans": f"KMeans(n_clusters={N_CLUSTERS}, n_init=1, max_iter={KMEANS_MAX_ITER}, "
                                            "init='k-means++', random_state=0).fit(X)",
        "gmm": f"GaussianMixture({N_CLUSTERS}, covariance_type='full', max_iter=20, random_state=0) fit on "
               f"X[:{GMM_FIT_ROWS}], then score_samples(X) / predict(X)",
        "gmm_fit": f"GaussianMixture({N_CLUSTERS}, covariance_type='full', init_params='random', "
                   f"max_iter={GMM_FIT_MAX_ITER}, tol=0, random_state=0).fit(X)",
        "budget_fraction": BUDGET_FRACTION,
        "method": "fresh process per case; a warm-up call on a tiny input first; extra = VmHWM after the "
                  "call - VmRSS before it, with VmHWM reset by /proc/self/clear_refs just before the call",
    }
    print(H.describe_machine(record))
    rows = []
    for case in cases:
        r = measure(case, args.n, args.d, args.seed)
        r["within_budget"] = r["extra_fraction_of_input"] <= BUDGET_FRACTION
        rows.append(r)
        print(f"{case}: extra {r['extra_peak_bytes'] / 1e6:.1f} MB ({r['extra_fraction_of_input']:.3f} of the input)",
              flush=True)
    record["cases"] = rows
    print()
    H.print_table(COLUMNS, rows, title=f"extra peak resident memory, N={args.n:,} D={args.d} float32 "
                                       f"(budget {BUDGET_FRACTION:.0%} of the input)")
    H.close_record(record, threads, warn)
    n_over = sum(not r["within_budget"] for r in rows)
    H.finish(NAME, "cpu", record, 0, out_dir=args.out, no_json=args.no_json)
    return 1 if n_over else 0


if __name__ == "__main__":
    sys.exit(main())
