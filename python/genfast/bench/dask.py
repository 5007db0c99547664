"""k-means on Dask: genfast.dask.KMeans against dask-ml's KMeans, on one LocalCluster.

Both peers run the same number of Lloyd iterations (10) on the same float32 dask array,
generated on the workers and persisted there, from the same initial centres, on the same
dask.distributed LocalCluster (default 2 worker processes x 1 thread; the nannies set
OMP_NUM_THREADS=1, so every kernel is single-threaded inside its worker). A timed fit is
``fit(X)`` plus reading the final inertia as a float (dask-ml leaves it lazy, genfast
computes it in fit), divided by the iterations run. Every peer's final centres are scored
the same way afterwards (float64 inertia of the nearest-centre assignment, on the cluster).

    python benchmarks/bench_dask.py --quick     # N=200,000 D=32 K=64, 1 repeat, well under a minute
    python benchmarks/bench_dask.py             # N=5,000,000 D=32 K=64 (issue 8), 3 repeats
    python benchmarks/bench_dask.py --sizes "1e6,16,32" --workers 2 --chunk-rows 100000

dask-ml is a benchmark-only dependency (the `bench` extra); where it is missing, or fails
with the installed dask / scikit-learn, its row is reported as skipped with the reason.
Results are printed and written as JSON to benchmarks/results/dask-cpu-<UTC stamp>.json (and
dask-cpu-latest.json).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
import warnings

import numpy as np  # noqa: E402

from . import _harness as H  # noqa: E402

NAME = "dask"
FULL_SIZES = [(5_000_000, 32, 64)]
QUICK_SIZES = [(200_000, 32, 64)]
PEERS = ["genfast.dask", "dask-ml"]
PEER_ALIASES = {"genfast": ["genfast.dask"], "genfast.dask": ["genfast.dask"], "dask-ml": ["dask-ml"],
                "dask_ml": ["dask-ml"]}
#: Chunks of X per worker by default: enough to balance the load, few enough that the
#: per-task overhead stays small next to the kernels.
CHUNKS_PER_WORKER = 8
#: Speed-up per iteration over dask-ml's KMeans that issue 8 asks of genfast.
TARGET_VS_DASK_ML = 3.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="N=200,000 D=32 K=64, 1 repeat")
    p.add_argument("--sizes", type=H.parse_sizes, default=None, metavar="N,D,K;...",
                   help="problem sizes, overriding the defaults (and --quick's)")
    p.add_argument("--peers", type=lambda text: H.parse_peers(text, PEER_ALIASES, PEERS), default=list(PEERS),
                   metavar="LIST", help="comma-separated subset of genfast,dask-ml (default: both)")
    p.add_argument("--workers", type=int, default=2, help="worker processes of the LocalCluster (default 2)")
    p.add_argument("--threads-per-worker", type=int, default=1, help="threads per worker (default 1)")
    p.add_argument("--chunk-rows", type=int, default=None,
                   help=f"rows per chunk of X (default N / ({CHUNKS_PER_WORKER} x workers), rounded up)")
    p.add_argument("--repeats", type=int, default=None, help="timed fits per peer (default 3, --quick 1)")
    p.add_argument("--iters", type=int, default=10, help="Lloyd iterations per fit (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the initial centres")
    p.add_argument("--out", default=str(H.RESULTS_DIR), help="folder for the JSON results")
    p.add_argument("--no-json", action="store_true", help="print the table only")
    return p


# --------------------------------------------------------------------------- data
def _blob_chunk(blob_centres, seed, block_info=None):
    """One chunk of Gaussian blobs (centres blob_centres, unit noise), float32, its random
    numbers drawn from (seed, chunk index) so the data do not depend on the workers."""
    (start, stop), _ = block_info[None]["array-location"]
    rng = np.random.default_rng((seed, block_info[None]["chunk-location"][0]))
    X = blob_centres[rng.integers(0, len(blob_centres), size=stop - start)]
    X += rng.standard_normal(X.shape, dtype=np.float32)
    return X


def make_data(da, client, N, D, K, chunk_rows, seed):
    """(X persisted on the workers, K distinct rows of X as initial centres, their indices).
    K blobs with centres ~ N(0, 2^2 I) and unit noise: they overlap enough that Lloyd does not
    converge within 10 iterations, so both peers run all of them."""
    rng = np.random.default_rng(seed)
    blob_centres = 2.0 * rng.standard_normal((K, D), dtype=np.float32)
    X = da.map_blocks(_blob_chunk, blob_centres, seed, chunks=(da.core.normalize_chunks(chunk_rows, (N,))[0], (D,)),
                      dtype=np.float32)
    X = client.persist(X)
    rows = np.sort(rng.choice(N, size=K, replace=False))
    C0 = X[rows].compute()
    if len(np.unique(C0, axis=0)) != K:  # continuous data: practically never
        raise RuntimeError("initial centres are not distinct; try another --seed")
    return X, C0, rows


def _sq_dist64(block, centers):
    from genfast import ops

    return ops.kmeans_assign(block.astype(np.float64), centers)[1]


def final_inertia(X, centers) -> float:
    """float64 sum over X of the squared distance to the nearest of `centers`."""
    centers = np.asarray(centers, dtype=np.float64)
    return float(X.map_blocks(_sq_dist64, centers, drop_axis=1, dtype=np.float64).sum().compute())


# --------------------------------------------------------------------------- peers
class Skip(Exception):
    """A peer that cannot run here: reported with the reason, not an error."""


def peer_genfast(X, C0, iters, repeats):
    import genfast.dask

    def fit(max_iter=iters):
        km = genfast.dask.KMeans(n_clusters=len(C0), init=C0, max_iter=max_iter, tol=0.0).fit(X)
        return km, float(km.inertia_)

    t = H.time_call(fit, repeats=repeats, warmup=1, warmup_fn=lambda: fit(1))
    km, inertia = t.output
    return dict(timing=t, n_iter=int(km.n_iter_), centers=km.cluster_centers_, inertia_self=inertia,
                params={"class": "genfast.dask.KMeans", "init": "C0 (array)", "max_iter": iters, "tol": 0.0},
                notes=["timed: fit(X) (a pass for the centring mean, variance and finiteness check, "
                       "n_iter Lloyd passes, a pass for the inertia of the returned centres) / n_iter_"])


def peer_dask_ml(X, C0, iters, repeats):
    cluster, why = H.try_import("dask_ml.cluster")
    if cluster is None:
        raise Skip(why)

    def fit(max_iter=iters):
        km = cluster.KMeans(n_clusters=len(C0), init=C0, max_iter=max_iter, tol=0.0).fit(X)
        inertia = km.inertia_
        return km, float(inertia.compute() if hasattr(inertia, "compute") else inertia)

    try:
        t = H.time_call(fit, repeats=repeats, warmup=1, warmup_fn=lambda: fit(1))
    except Exception as e:  # dask-ml that does not work with the installed dask / scikit-learn
        raise Skip(f"dask-ml failed with the installed packages: {type(e).__name__}: {e}\n"
                   f"{traceback.format_exc()}") from e
    km, inertia = t.output
    return dict(timing=t, n_iter=int(km.n_iter_), centers=np.asarray(km.cluster_centers_), inertia_self=inertia,
                params={"class": "dask_ml.cluster.KMeans", "init": "C0 (array)", "max_iter": iters, "tol": 0.0},
                notes=["timed: fit(X) plus computing its lazy inertia_ / n_iter_; the warm-up fit "
                       "compiles dask-ml's numba kernel on every worker"])


PEER_FUNCS = {"genfast.dask": peer_genfast, "dask-ml": peer_dask_ml}

COLUMNS = [
    H.Column("peer", "peer", align="<"),
    H.Column("s/iter", "s_per_iter", "{:.4f}"),
    H.Column("min s/iter", "s_per_iter_min", "{:.4f}"),
    H.Column("iters", "n_iter", "{}"),
    H.Column("inertia", "inertia", "{:.6e}"),
    H.Column("vs genfast", "inertia_rel_diff_vs_genfast", "{:+.1e}"),
    H.Column("time/genfast", "ratio_vs_genfast", "{:.2f}x"),
    H.Column("note", "note", align="<"),
]


def run_case(client, da, N, D, K, peers, args) -> dict:
    chunk_rows = args.chunk_rows or -(-N // (CHUNKS_PER_WORKER * args.workers))
    print(f"\n== k-means on dask N={N:,} D={D} K={K}, float32, chunks of {chunk_rows:,} rows, "
          f"{args.iters} Lloyd iterations from the same initial centres, {args.workers} workers x "
          f"{args.threads_per_worker} thread(s), median of {args.repeats} repeat(s) ==", flush=True)
    t0 = time.perf_counter()
    X, C0, rows = make_data(da, client, N, D, K, chunk_rows, args.seed)
    print(f"data generated and persisted on the workers in {time.perf_counter() - t0:.1f} s", flush=True)
    raw = {}
    for peer in peers:
        t0 = time.perf_counter()
        try:
            raw[peer] = {"status": "ok", **PEER_FUNCS[peer](X, C0, args.iters, args.repeats)}
            raw[peer]["inertia"] = final_inertia(X, raw[peer]["centers"])
        except Skip as e:
            raw[peer] = {"status": "skipped", "reason": str(e)}
        except Exception as e:
            raw[peer] = {"status": "error", "reason": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        raw[peer]["wall_seconds"] = time.perf_counter() - t0
        if raw[peer]["status"] != "ok":
            print(f"  {peer}: {raw[peer]['status']}: {raw[peer]['reason'].splitlines()[0]}", flush=True)

    ref = raw.get("genfast.dask") if raw.get("genfast.dask", {}).get("status") == "ok" else None
    rows_out, results = [], []
    for peer in peers:
        r = raw[peer]
        row = {"peer": peer}
        res = {"peer": peer, "status": r["status"], "wall_seconds": r["wall_seconds"]}
        if r["status"] != "ok":
            row["note"] = f"{r['status']}: {r['reason'].splitlines()[0]}"
            res.update({k: r[k] for k in ("reason", "traceback") if k in r})
            rows_out.append(row)
            results.append(res)
            continue
        per_iter = r["timing"].scaled(1.0 / max(1, r["n_iter"]))
        row.update(s_per_iter=per_iter["median"], s_per_iter_min=per_iter["min"], n_iter=r["n_iter"],
                   inertia=r["inertia"])
        if r["n_iter"] != args.iters:
            row["note"] = f"stopped after {r['n_iter']} iterations; time divided by {r['n_iter']}"
        if ref is not None:
            row["inertia_rel_diff_vs_genfast"] = (r["inertia"] - ref["inertia"]) / ref["inertia"]
            row["ratio_vs_genfast"] = per_iter["median"] / (ref["timing"].median / max(1, ref["n_iter"]))
        res.update({"seconds_per_iter": per_iter, "seconds_per_fit": r["timing"].as_dict(), "n_iter": r["n_iter"],
                    "inertia": r["inertia"], "inertia_self_reported": r["inertia_self"],
                    "inertia_rel_diff_vs_genfast": row.get("inertia_rel_diff_vs_genfast"),
                    "ratio_vs_genfast": row.get("ratio_vs_genfast"), "params": r["params"], "notes": r["notes"]})
        rows_out.append(row)
        results.append(res)
    print(H.format_table(COLUMNS, rows_out), flush=True)
    speedup = raw.get("dask-ml", {}).get("status") == "ok" and ref is not None
    if speedup:
        ratio = next(row["ratio_vs_genfast"] for row in rows_out if row["peer"] == "dask-ml")
        print(f"genfast.dask is {ratio:.2f}x faster per iteration than dask-ml (target {TARGET_VS_DASK_ML:g}x)")
    client.cancel(X)
    return {
        "N": N, "D": D, "K": K, "dtype": "float32", "iterations": args.iters, "repeats": args.repeats,
        "chunk_rows": chunk_rows, "chunks": len(X.chunks[0]),
        "data": {"kind": "gaussian blobs", "blobs": K, "blob_centre_std": 2.0, "noise_std": 1.0, "seed": args.seed,
                 "generated": "on the workers, chunk by chunk, persisted before timing",
                 "initial_centres": "K distinct rows of X chosen by the seed", "initial_rows_head": rows[:16].tolist()},
        "target_speedup_vs_dask_ml": TARGET_VS_DASK_ML,
        "results": results,
    }


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if min(args.repeats, args.iters, args.workers, args.threads_per_worker, args.chunk_rows or 1) < 1:
        print("--repeats, --iters, --workers, --threads-per-worker and --chunk-rows must be >= 1", file=sys.stderr)
        return 2
    if not args.peers:
        print("no peers selected", file=sys.stderr)
        return 2
    da, why = H.try_import("dask.array")
    distributed, why_distributed = H.try_import("distributed")
    if da is None or distributed is None:
        return H.skip(NAME, f"the dask benchmark needs genfast[dask] ({why or why_distributed})")
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    warn = H.busy_warning(args.workers * args.threads_per_worker)
    record = H.base_record(NAME, "cpu")
    print("genfast k-means on dask benchmark; " + H.describe_machine(record))
    if warn:
        print(warn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the cluster's shutdown chatter
        with distributed.LocalCluster(n_workers=args.workers, threads_per_worker=args.threads_per_worker,
                                      processes=True, dashboard_address=None) as cluster, \
                distributed.Client(cluster) as client:
            record["settings"] = {
                "quick": args.quick, "sizes": [list(s) for s in sizes], "peers": args.peers,
                "repeats": args.repeats, "iterations": args.iters, "dtype": "float32", "seed": args.seed,
                "warmup": "one untimed 1-iteration fit per peer and size",
                "statistic": "median over repeats of (fit seconds, inertia read, / n_iter)",
                "timer": "time.perf_counter",
            }
            record["cluster"] = {
                "kind": "dask.distributed.LocalCluster (processes)", "workers": args.workers,
                "threads_per_worker": args.threads_per_worker,
                "worker_thread_env": client.run(lambda: {k: __import__("os").environ.get(k) for k in
                                                         ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}),
                "memory_limit_per_worker_bytes": [w["memory_limit"] for w in client.scheduler_info()["workers"].values()],
            }
            record["fairness"] = {
                "same_cluster_data_and_initial_centres": True,
                "inertia": "every peer's final centres scored the same way: float64 sum of squared distances "
                           "to the nearest final centre (genfast.ops.kmeans_assign on float64 chunks)",
            }
            record["cases"] = [run_case(client, da, N, D, K, args.peers, args) for N, D, K in sizes]
    H.close_record(record, args.workers * args.threads_per_worker, warn)
    n_err = sum(r["status"] == "error" for c in record["cases"] for r in c["results"])
    return H.finish(NAME, "cpu", record, n_err, out_dir=args.out, no_json=args.no_json)


if __name__ == "__main__":
    sys.exit(main())
