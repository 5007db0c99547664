"""k-means (Lloyd) benchmark: genfast against scikit-learn, faiss and torch, in one run.

Every peer runs the same number of Lloyd iterations (10) on the same float32 data from the
same initial centres, with the same number of threads, and is timed the same way; numpy's
float32 matmul rate, measured in the same run, is the machine's ceiling. The final centres
of every peer are scored the same way (float64 inertia after assigning every point to its
nearest final centre), so the inertias are comparable.

    python benchmarks/bench_kmeans.py --quick            # small sizes, < 1 minute on 2 cores
    python benchmarks/bench_kmeans.py                    # N=1e6 D=32 K=256 and N=2e5 D=64 K=1024
    python benchmarks/bench_kmeans.py --sizes "500000,16,128;100000,128,512" --repeats 5
    python benchmarks/bench_kmeans.py --peers genfast,faiss --device cuda

Results are printed as a table and written as JSON to
benchmarks/results/kmeans-<device>-<UTC timestamp>.json (and kmeans-<device>-latest.json).
See benchmarks/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
import warnings

import numpy as np  # noqa: E402

from . import _harness as H  # noqa: E402

NAME = "kmeans"
FULL_SIZES = [(1_000_000, 32, 256), (200_000, 64, 1024)]
QUICK_SIZES = [(100_000, 32, 64), (20_000, 64, 256)]
SQUARE = 4096
#: Row names, in table order. "genfast" on the command line selects both genfast rows.
PEERS = ["genfast", "genfast ops", "sklearn", "faiss", "torch", "torch.compile"]
PEER_ALIASES = {"genfast": ["genfast", "genfast ops"], "genfast-ops": ["genfast ops"],
                "genfast_ops": ["genfast ops"], "genfast ops": ["genfast ops"],
                "sklearn": ["sklearn"], "scikit-learn": ["sklearn"], "faiss": ["faiss"],
                "torch": ["torch"], "torch.compile": ["torch.compile"],
                "torch-compile": ["torch.compile"]}
#: Upper bound on one distance tile of the torch peers and the same-shape GEMM (bytes).
CPU_TILE_BYTES = 64 * 2**20
CUDA_TILE_BYTES = 1 * 2**30


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See benchmarks/README.md for the columns and the JSON layout.")
    p.add_argument("--quick", action="store_true",
                   help="small sizes (N=100000 D=32 K=64; N=20000 D=64 K=256), 1 repeat")
    p.add_argument("--sizes", type=H.parse_sizes, default=None, metavar="N,D,K;...",
                   help="problem sizes, overriding the defaults (and --quick's)")
    p.add_argument("--peers", type=lambda text: H.parse_peers(text, PEER_ALIASES, PEERS), default=list(PEERS),
                   metavar="LIST", help="comma-separated subset of "
                   "genfast,genfast-ops,sklearn,faiss,torch,torch.compile (default: all; "
                   "'genfast' means both genfast rows)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cpu (default), or cuda: genfast on torch CUDA tensors against torch on CUDA")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed fits per peer; the median is reported (default 3, --quick 1)")
    p.add_argument("--iters", type=int, default=10, help="Lloyd iterations per fit (default 10)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for every peer (default: all CPUs this process may use)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and initial centres")
    p.add_argument("--square", type=int, default=SQUARE,
                   help=f"size of the square GEMM for the matmul ceiling (default {SQUARE}; 0 skips it)")
    p.add_argument("--out", default=str(H.RESULTS_DIR), help="folder for the JSON results")
    p.add_argument("--no-json", action="store_true", help="print the table only")
    return p


# --------------------------------------------------------------------------- data
def make_data(N: int, D: int, K: int, seed: int):
    """Gaussian blobs (K blobs, centres ~ N(0, 2^2 I), unit noise) as float32, and K distinct
    rows of X chosen by the seed as initial centres. The blobs overlap enough that Lloyd does
    not converge within 10 iterations, so every peer really runs all of them."""
    rng = np.random.default_rng(seed)
    blob_centres = 2.0 * rng.standard_normal((K, D), dtype=np.float32)
    X = blob_centres[rng.integers(0, K, size=N)]
    X += rng.standard_normal((N, D), dtype=np.float32)
    rows = np.sort(rng.choice(N, size=K, replace=False))
    C0 = np.ascontiguousarray(X[rows])
    if len(np.unique(C0, axis=0)) != K:  # continuous data: practically never
        raise RuntimeError("initial centres are not distinct; try another --seed")
    return X, C0, rows


def tile_rows(N: int, K: int, tile_bytes: int) -> int:
    return max(1, min(N, tile_bytes // (4 * K)))


# --------------------------------------------------------------------------- context
class Case:
    """One problem size and everything the peers share."""

    def __init__(self, N, D, K, args, torch=None):
        self.N, self.D, self.K = N, D, K
        self.iters = args.iters
        self.repeats = args.repeats
        self.seed = args.seed
        self.device = args.device
        self.threads = args.threads
        self.torch = torch
        self.X, self.C0, self.init_rows = make_data(N, D, K, args.seed)
        self.flops_per_iter = 2.0 * N * K * D
        self._X_dev = None

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def X_dev(self):
        """X as a torch CUDA tensor (cuda) - copied once per case, outside every timing."""
        if self._X_dev is None:
            self._X_dev = self.torch.from_numpy(self.X).to("cuda")
            self.sync()
        return self._X_dev

    def release(self):
        self._X_dev = None
        if self.cuda:
            self.torch.cuda.empty_cache()


class Skip(Exception):
    """A peer that cannot run here (not installed, no GPU support, ...): reported, not an error."""


def _timing(case: Case, fn, warmup_fn):
    time.sleep(0.2)  # let other libraries' idle worker threads go to sleep first
    return H.time_call(fn, repeats=case.repeats, warmup=1, warmup_fn=warmup_fn, sync=case.sync)


# --------------------------------------------------------------------------- peers
# Each peer returns dict(timing=Timing, n_iter=int, centers=float32 ndarray (K, D),
# inertia_self=float|None, notes=[...], params={...}).

def peer_genfast(case: Case, mods):
    genfast = mods.get("genfast")
    if genfast is None:
        raise Skip(mods["_why"]["genfast"])
    if case.cuda and not genfast.config()["cuda"]["usable"]:
        raise Skip(f"genfast CUDA backend not usable: {genfast.config()['cuda']['status']}")
    X = case.X_dev() if case.cuda else case.X
    params = dict(n_clusters=case.K, init=case.C0, n_init=1, max_iter=case.iters, tol=0.0)

    def fit(max_iter=case.iters):
        return genfast.KMeans(**{**params, "max_iter": max_iter}).fit(X)

    t = _timing(case, fit, lambda: fit(1))
    km = t.output
    return dict(timing=t, n_iter=int(km.n_iter_), centers=np.asarray(km.cluster_centers_),
                inertia_self=float(km.inertia_),
                params={"class": "genfast.KMeans", **{k: v for k, v in params.items() if k != "init"},
                        "init": "C0 (array)", "input": "torch CUDA tensor" if case.cuda else "numpy"},
                notes=["timed: KMeans(...).fit(X) / n_iter_ (includes validation, copy and "
                       "centring of X, and the final E-step)"])


def peer_genfast_ops(case: Case, mods):
    genfast = mods.get("genfast")
    if genfast is None:
        raise Skip(mods["_why"]["genfast"])
    if case.cuda and not genfast.config()["cuda"]["usable"]:
        raise Skip(f"genfast CUDA backend not usable: {genfast.config()['cuda']['status']}")
    ops = genfast.ops
    if case.cuda:
        torch = case.torch
        X = case.X_dev()
        C0 = torch.from_numpy(case.C0).to("cuda")
        where = torch.where
    else:
        X, C0, where = case.X, case.C0, np.where

    def run(iters=case.iters):
        C = C0
        sq = None
        for _ in range(iters):
            labels, sq, means, w = ops.kmeans_lloyd_step(X, C, check_finite=False)
            C = where(w[:, None] > 0, means, C)  # an empty cluster keeps its centre
        return C, sq

    t = _timing(case, run, lambda: run(1))
    C, sq = t.output
    to_np = (lambda a: a.cpu().numpy()) if case.cuda else np.asarray
    return dict(timing=t, n_iter=case.iters, centers=to_np(C),
                inertia_self=float(to_np(sq).astype(np.float64).sum()),
                params={"loop": f"{case.iters} x kmeans_lloyd_step(return_means=True)",
                        "check_finite": False, "empty_cluster": "keeps its centre"},
                notes=["raw kernels, no estimator overhead; self-reported inertia is that of the "
                       "last assignment (before the last update)"])


def peer_sklearn(case: Case, mods):
    if case.cuda:
        raise Skip("scikit-learn runs on the CPU only (use --device cpu)")
    cluster = mods.get("sklearn.cluster")
    if cluster is None:
        raise Skip(mods["_why"]["sklearn.cluster"])
    params = dict(n_clusters=case.K, init=case.C0, n_init=1, max_iter=case.iters, tol=0.0,
                  algorithm="lloyd")

    def fit(max_iter=case.iters):
        return cluster.KMeans(**{**params, "max_iter": max_iter}).fit(case.X)

    t = _timing(case, fit, lambda: fit(1))
    km = t.output
    return dict(timing=t, n_iter=int(km.n_iter_), centers=np.asarray(km.cluster_centers_),
                inertia_self=float(km.inertia_),
                params={"class": "sklearn.cluster.KMeans", **{k: v for k, v in params.items() if k != "init"},
                        "init": "C0 (array)"},
                notes=["timed: KMeans(...).fit(X) / n_iter_ (includes validation, copy and "
                       "centring of X, and the final E-step)"])


def peer_faiss(case: Case, mods):
    faiss = mods.get("faiss")
    if faiss is None:
        raise Skip(mods["_why"]["faiss"])
    gpu = False
    if case.cuda:
        n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        if n_gpus < 1:
            raise Skip("this faiss build has no GPU support (faiss-cpu); use --device cpu")
        gpu = True
    params = dict(niter=case.iters, max_points_per_centroid=10**9, min_points_per_centroid=1,
                  seed=case.seed, verbose=False, spherical=False)

    def fit(niter=case.iters):
        km = faiss.Kmeans(case.D, case.K, gpu=gpu, **{**params, "niter": niter})
        km.train(case.X, init_centroids=case.C0)
        return km

    t = _timing(case, fit, lambda: fit(1))
    km = t.output
    obj = np.asarray(km.obj, dtype=np.float64)
    return dict(timing=t, n_iter=int(obj.size), centers=np.asarray(km.centroids, dtype=np.float32),
                inertia_self=float(obj[-1]) if obj.size else None,
                params={"class": "faiss.Kmeans", "gpu": gpu, **params,
                        "train": "km.train(X, init_centroids=C0)"},
                extra={"obj": obj.tolist(),
                       "nsplit": [s.get("nsplit") for s in getattr(km, "iteration_stats", [])]},
                notes=["max_points_per_centroid=1e9 disables faiss's subsampling to 256*K points; "
                       "self-reported inertia km.obj[-1] is that of the last assignment (before "
                       "the last update); empty clusters are split faiss's way"])


def lloyd_iteration(X, C, x_sq, chunk: int):
    """One Lloyd iteration in plain torch: assign every point to its nearest centre, then move
    each centre to the mean of its points (an empty cluster keeps its centre).
    Returns (new centres, labels, squared distance of each point to its centre)."""
    import torch

    # argmin_k ||x - c_k||^2 = argmin_k (||c_k||^2 - 2 x.c_k); ||x||^2 is added back after.
    c_sq = (C * C).sum(dim=1)
    mins, idx = [], []
    for s in range(0, X.shape[0], chunk):  # bound the (chunk, K) distance tile
        d = torch.addmm(c_sq, X[s:s + chunk], C.t(), beta=1.0, alpha=-2.0)
        v, i = d.min(dim=1)
        mins.append(v)
        idx.append(i)
    labels = torch.cat(idx)
    min_sq = (torch.cat(mins) + x_sq).clamp(min=0)
    sums = torch.zeros_like(C).index_add_(0, labels, X)
    counts = torch.zeros(C.shape[0], dtype=C.dtype, device=C.device).index_add_(0, labels, torch.ones_like(x_sq))
    new_C = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], C)
    return new_C, labels, min_sq


def _torch_peer(case: Case, mods, compiled: bool):
    torch = mods.get("torch")
    if torch is None:
        raise Skip(mods["_why"]["torch"])
    dev = "cuda" if case.cuda else "cpu"
    X = case.X_dev() if case.cuda else torch.from_numpy(case.X)
    C0 = torch.from_numpy(case.C0).to(dev)
    chunk = tile_rows(case.N, case.K, CUDA_TILE_BYTES if case.cuda else CPU_TILE_BYTES)
    step = lloyd_iteration
    if compiled:
        step = torch.compile(lloyd_iteration, dynamic=False)

    def run(iters=case.iters):
        x_sq = (X * X).sum(dim=1)
        C, min_sq = C0, None
        for _ in range(iters):
            C, _, min_sq = step(X, C, x_sq, chunk)
        return C, min_sq

    compile_s = None
    if compiled:  # compile once, outside the timing; a failure is a skip with the reason
        torch._dynamo.reset()
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                run(1)
                case.sync()
        except Exception as e:
            msg = str(e).strip().splitlines()
            raise Skip(f"torch.compile failed on this build: {type(e).__name__}: "
                       f"{msg[0][:300] if msg else ''}") from None
        compile_s = time.perf_counter() - t0

    t = _timing(case, run, lambda: run(1))
    C, min_sq = t.output
    notes = ["||x||^2 - 2 X C^T + ||c||^2 via torch.addmm in tiles of "
             f"{chunk} rows, min over K, index_add_ for sums and counts"]
    if compiled:
        notes.append(f"torch.compile(lloyd_iteration, dynamic=False); first call (compilation) "
                     f"took {compile_s:.1f} s, excluded")
    return dict(timing=t, n_iter=case.iters, centers=C.cpu().numpy(),
                inertia_self=float(min_sq.double().sum()),
                params={"function": "lloyd_iteration", "compiled": compiled, "tile_rows": chunk,
                        "device": dev, "torch_threads": torch.get_num_threads()},
                extra={"compile_seconds": compile_s} if compiled else {},
                notes=notes)


def peer_torch(case, mods):
    return _torch_peer(case, mods, compiled=False)


def peer_torch_compile(case, mods):
    return _torch_peer(case, mods, compiled=True)


PEER_FUNCS = {"genfast": peer_genfast, "genfast ops": peer_genfast_ops, "sklearn": peer_sklearn,
              "faiss": peer_faiss, "torch": peer_torch, "torch.compile": peer_torch_compile}


# --------------------------------------------------------------------------- ceiling
def matmul_ceiling(case: Case, mods, square: int, repeats: int) -> dict:
    """GFLOP/s of a float32 GEMM of the distance product's shape [N,D]x[D,K] (in the same row
    tiles as the torch peers, into one reused output tile) and of a square one; the ceiling is
    the larger rate, each rate from the best of its repeats."""
    N, D, K = case.N, case.D, case.K
    out = {}
    if case.cuda:
        torch = mods["torch"]
        lib = f"torch.mm (CUDA, allow_tf32={torch.backends.cuda.matmul.allow_tf32})"
        A = case.X_dev()
        B = torch.from_numpy(np.ascontiguousarray(case.C0.T)).to("cuda")
        rows = tile_rows(N, K, CUDA_TILE_BYTES)
        buf = torch.empty((rows, K), dtype=torch.float32, device="cuda")

        def same():
            for s in range(0, N, rows):
                e = min(N, s + rows)
                torch.mm(A[s:e], B, out=buf[: e - s])

        def make_square():
            g = torch.Generator(device="cuda").manual_seed(case.seed)
            P = torch.randn((square, square), generator=g, device="cuda")
            Q = torch.randn((square, square), generator=g, device="cuda")
            R = torch.empty_like(P)
            return lambda: torch.mm(P, Q, out=R)
    else:
        lib = "numpy.matmul (float32, " + H.blas_name() + ")"
        A, B = case.X, np.ascontiguousarray(case.C0.T)
        rows = tile_rows(N, K, CPU_TILE_BYTES)
        buf = np.empty((rows, K), dtype=np.float32)

        def same():
            for s in range(0, N, rows):
                e = min(N, s + rows)
                np.matmul(A[s:e], B, out=buf[: e - s])

        def make_square():
            rng = np.random.default_rng(case.seed)
            P = rng.standard_normal((square, square), dtype=np.float32)
            Q = rng.standard_normal((square, square), dtype=np.float32)
            R = np.empty_like(P)
            return lambda: np.matmul(P, Q, out=R)

    time.sleep(0.2)
    t = H.time_call(same, repeats=repeats, warmup=1, sync=case.sync)
    flops = 2.0 * N * D * K
    out["library"] = lib
    out["same_shape"] = {"shape": f"[{N},{D}]x[{D},{K}]", "tile_rows": rows, "flops": flops,
                         "seconds": t.as_dict(), "gflops_best": flops / t.min / 1e9,
                         "gflops_median": flops / t.median / 1e9}
    rates = [out["same_shape"]["gflops_best"]]
    if square > 0:
        sq_fn = make_square()
        time.sleep(0.2)
        t = H.time_call(sq_fn, repeats=repeats, warmup=1, sync=case.sync)
        flops = 2.0 * square ** 3
        out["square"] = {"shape": f"{square}^3", "flops": flops, "seconds": t.as_dict(),
                         "gflops_best": flops / t.min / 1e9, "gflops_median": flops / t.median / 1e9}
        rates.append(out["square"]["gflops_best"])
        del sq_fn
    out["matmul_gflops"] = max(rates)
    out["rule"] = "max of the same-shape and square GEMM rates, each from its best repeat"
    return out


# --------------------------------------------------------------------------- inertia
def final_inertia(case: Case, X64, centers, genfast) -> tuple[float, int]:
    """(sum_i min_k ||x_i - c_k||^2 in float64 with every point assigned to its nearest final
    centre, number of final centres that no point is nearest to)."""
    C64 = np.asarray(centers, dtype=np.float64)
    if genfast is not None:
        labels, sq = genfast.ops.kmeans_assign(X64, C64)
        total = float(np.sum(sq))
    else:  # numpy fallback, in tiles
        total, parts = 0.0, []
        c_sq = np.einsum("ij,ij->i", C64, C64)
        for s in range(0, case.N, 8192):
            x = X64[s:s + 8192]
            d = np.einsum("ij,ij->i", x, x)[:, None] - 2 * x @ C64.T + c_sq[None, :]
            parts.append(d.argmin(axis=1))
            total += float(np.maximum(d.min(axis=1), 0).sum())
        labels = np.concatenate(parts)
    empty = int(np.sum(np.bincount(np.asarray(labels), minlength=case.K) == 0))
    return total, empty


# --------------------------------------------------------------------------- driver
def import_peers(peers, device) -> dict:
    wanted = {"genfast"}  # also evaluates every peer's final inertia
    if "sklearn" in peers:
        wanted.add("sklearn.cluster")
    if "faiss" in peers:
        wanted.add("faiss")
    if device == "cuda" or any(p.startswith("torch") for p in peers):
        wanted.add("torch")
    return H.import_modules(wanted)


def set_threads(mods, threads: int) -> dict:
    how = {"numpy BLAS, genfast/scikit-learn OpenMP": f"threadpoolctl.threadpool_limits({threads})"}
    if mods.get("torch") is not None:
        mods["torch"].set_num_threads(threads)
        how["torch"] = f"torch.set_num_threads({threads})"
    if mods.get("faiss") is not None and hasattr(mods["faiss"], "omp_set_num_threads"):
        mods["faiss"].omp_set_num_threads(threads)
        how["faiss"] = f"faiss.omp_set_num_threads({threads})"
    return how


COLUMNS = [
    H.Column("peer", "peer", align="<"),
    H.Column("s/iter", "s_per_iter", "{:.4f}"),
    H.Column("min s/iter", "s_per_iter_min", "{:.4f}"),
    H.Column("GFLOP/s", "gflops", "{:.1f}"),
    H.Column("of matmul", "fraction_of_matmul", lambda v: f"{100 * v:.0f}%"),
    H.Column("iters", "n_iter", "{}"),
    H.Column("inertia", "inertia", "{:.6e}"),
    H.Column("empty", "empty", "{}"),
    H.Column("vs genfast", "inertia_rel_diff_vs_genfast", "{:+.1e}"),
    H.Column("time/genfast", "ratio_vs_genfast", "{:.2f}x"),
    H.Column("note", "note", align="<"),
]


def run_case(case: Case, peers, mods, args) -> dict:
    N, D, K = case.N, case.D, case.K
    title = (f"\n== k-means N={N:,} D={D} K={K}, float32, {case.iters} Lloyd iterations from the "
             f"same initial centres, {case.threads} threads, {case.device}, median of "
             f"{case.repeats} repeat(s) ==")
    print(title, flush=True)
    ceiling = matmul_ceiling(case, mods, args.square, max(2, case.repeats))
    sq = ceiling.get("square")
    print(f"matmul ceiling [{ceiling['library']}]: same shape {ceiling['same_shape']['shape']} "
          f"{ceiling['same_shape']['gflops_best']:.1f} GFLOP/s"
          + (f", square {sq['shape']} {sq['gflops_best']:.1f} GFLOP/s" if sq else "")
          + f" -> {ceiling['matmul_gflops']:.1f} GFLOP/s", flush=True)

    raw = {}
    for peer in peers:
        t0 = time.perf_counter()
        try:
            raw[peer] = {"status": "ok", **PEER_FUNCS[peer](case, mods)}
        except Skip as e:
            raw[peer] = {"status": "skipped", "reason": str(e)}
        except Exception as e:
            raw[peer] = {"status": "error", "reason": f"{type(e).__name__}: {e}",
                         "traceback": traceback.format_exc()}
        raw[peer]["wall_seconds"] = time.perf_counter() - t0
        if raw[peer]["status"] != "ok":
            print(f"  {peer}: {raw[peer]['status']}: {raw[peer]['reason']}", flush=True)

    # Score every peer's final centres the same way (float64, nearest-centre assignment).
    genfast = mods.get("genfast")
    X64 = case.X.astype(np.float64)
    for r in raw.values():
        if r["status"] == "ok":
            r["inertia"], r["empty"] = final_inertia(case, X64, r["centers"], genfast)
    del X64

    ref_name = next((p for p in ("genfast", "genfast ops") if raw.get(p, {}).get("status") == "ok"), None)
    ref = raw.get(ref_name) if ref_name else None
    rows, results = [], []
    for peer in peers:
        r = raw[peer]
        row = {"peer": peer, "status": r["status"]}
        res = {"peer": peer, "status": r["status"], "wall_seconds": r["wall_seconds"]}
        if r["status"] != "ok":
            row["note"] = f"{r['status']}: {r['reason']}"
            res["reason"] = r["reason"]
            if "traceback" in r:
                res["traceback"] = r["traceback"]
            rows.append(row)
            results.append(res)
            continue
        n_iter = max(1, r["n_iter"])
        per_iter = r["timing"].scaled(1.0 / n_iter)
        notes = list(r.get("notes", []))
        short = []
        if r["n_iter"] != case.iters:
            short.append(f"stopped after {r['n_iter']} iterations; time divided by {r['n_iter']}")
            notes.insert(0, short[-1])
        row.update(s_per_iter=per_iter["median"], s_per_iter_min=per_iter["min"], n_iter=r["n_iter"],
                   inertia=r["inertia"], empty=r["empty"])
        row["gflops"] = case.flops_per_iter / per_iter["median"] / 1e9
        row["fraction_of_matmul"] = row["gflops"] / ceiling["matmul_gflops"]
        if ref is not None:
            row["inertia_rel_diff_vs_genfast"] = (r["inertia"] - ref["inertia"]) / ref["inertia"]
            row["ratio_vs_genfast"] = per_iter["median"] / (ref["timing"].median / max(1, ref["n_iter"]))
        if peer == "torch.compile":
            short.append(f"compile {r['extra']['compile_seconds']:.1f}s excluded")
        row["note"] = "; ".join(short)
        res.update({
            "seconds_per_iter": per_iter,
            "seconds_per_fit": r["timing"].as_dict(),
            "n_iter": r["n_iter"],
            "gflops": row["gflops"],
            "fraction_of_matmul": row["fraction_of_matmul"],
            "inertia": r["inertia"],
            "inertia_self_reported": r.get("inertia_self"),
            "empty_final_clusters": r["empty"],
            "inertia_rel_diff_vs_genfast": row.get("inertia_rel_diff_vs_genfast"),
            "ratio_vs_genfast": row.get("ratio_vs_genfast"),
            "params": r.get("params", {}),
            "notes": notes,
            **({"extra": r["extra"]} if r.get("extra") else {}),
        })
        rows.append(row)
        results.append(res)

    print(H.format_table(COLUMNS, rows), flush=True)
    return {
        "N": N, "D": D, "K": K, "dtype": "float32", "iterations": case.iters,
        "flops_per_iter": case.flops_per_iter, "flops_rule": "2*N*K*D per Lloyd iteration",
        "repeats": case.repeats, "reference_peer": ref_name,
        "data": {"kind": "gaussian blobs", "blobs": K, "blob_centre_std": 2.0, "noise_std": 1.0,
                 "seed": case.seed, "initial_centres": "K distinct rows of X chosen by the seed",
                 "initial_rows_head": case.init_rows[:16].tolist()},
        "matmul": ceiling,
        "results": results,
    }


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.repeats < 1 or args.iters < 1:
        print("--repeats and --iters must be >= 1", file=sys.stderr)
        return 2
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    peer_run = H.PeerRun(NAME, "genfast k-means benchmark", args, import_peers, set_threads)
    if (status := peer_run.start()) is not None:
        return status
    with peer_run:
        record, mods = peer_run.record, peer_run.mods
        record["settings"] = {
            "quick": args.quick, "sizes": [list(s) for s in sizes], "peers": args.peers,
            "repeats": args.repeats, "warmup": "one untimed 1-iteration call per peer and size",
            "iterations": args.iters, "dtype": "float32", "seed": args.seed,
            "square_gemm": args.square, "statistic": "median over repeats of (fit seconds / n_iter)",
            "timer": peer_run.timer(),
        }
        record["fairness"].update({
            "same_initial_centres_for_every_peer": True,
            "faiss_subsampling_disabled": "max_points_per_centroid=10**9",
            "inertia": "every peer's final centres scored the same way: float64 sum of squared "
                       "distances to the nearest final centre (genfast.ops.kmeans_assign on float64)",
        })
        record["cases"] = []
        for N, D, K in sizes:
            case = Case(N, D, K, args, torch=mods.get("torch"))
            record["cases"].append(run_case(case, args.peers, mods, args))
            case.release()
            del case

    n_err = sum(r["status"] == "error" for c in record["cases"] for r in c["results"])
    return H.finish(NAME, args.device, record, n_err, out_dir=args.out, no_json=args.no_json)


if __name__ == "__main__":
    sys.exit(main())
