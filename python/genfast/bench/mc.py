"""Monte Carlo likelihood benchmark (float32, CPU or CUDA), every peer on the same tensors in one run:

1. log-mean-exp of log-weights [B, M]: genfast.ops.logmeanexp against torch.logsumexp - log M
   (eager and torch.compile) and scipy.special.logsumexp (CPU only);
2. log importance weights from decoder Bernoulli logits [B, m, D], x [B, D], log p(z) and
   log q(z | x) [B, m]: genfast.ops.log_importance_weights (fused, no [B, m, D] temporaries)
   against the torch composite (-BCE-with-logits summed over D, + log p(z) - log q(z | x)).

    python benchmarks/bench_mc.py            # B=1024 M=4096; B=256 m=256 D=784 (issue 5)
    python benchmarks/bench_mc.py --quick    # smaller, a few seconds
    python benchmarks/bench_mc.py --device cuda  # the same on the GPU (needs torch with CUDA)

On CUDA, genfast.ops.logmeanexp's time includes its one device-to-host copy (the NaN/+inf
check); the weights are timed with their check too (check_finite=True, one copy).

Writes benchmarks/results/mc-<device>-<UTC timestamp>.json and mc-<device>-latest.json.
"""

from __future__ import annotations

import argparse
import math
import sys
import traceback

from . import _harness as H  # noqa: E402

NAME = "mc"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="B=256 M=1024; B=64 m=64 D=784")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats, median reported (default 15)")
    p.add_argument("--threads", type=int, default=None, help="threads for every peer (default: all usable)")
    p.add_argument("--out", default=str(H.RESULTS_DIR), help="folder for the JSON results")
    p.add_argument("--no-json", action="store_true", help="print the tables only")
    args = p.parse_args(argv)

    import numpy as np

    from genfast import ops

    torch, why = H.try_import("torch")
    if torch is None:
        return H.skip(NAME, f"this benchmark needs torch ({why})")
    scipy_special, scipy_why = H.try_import("scipy.special")
    if args.device == "cuda":
        why = H.cuda_skip_reason(torch)
        if why:
            return H.skip(NAME, why)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if args.device == "cuda" else None

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    repeats = args.repeats or (5 if args.quick else 15)
    (B, M), (Bw, m, D) = ((256, 1024), (64, 64, 784)) if args.quick else ((1024, 4096), (256, 256, 784))
    warn = H.busy_warning(threads)
    limiter = H.limit_threads(threads)
    record = H.base_record(NAME, args.device)
    record["settings"] = {"threads": threads, "repeats": repeats, "logmeanexp": [B, M], "weights": [Bw, m, D]}
    record["cases"], errors = [], 0
    g = torch.Generator().manual_seed(0)

    a = (10 * torch.randn(B, M, generator=g)).to(device)
    a_np = a.cpu().numpy()
    log_m = math.log(M)
    compiled = torch.compile(lambda t: torch.logsumexp(t, 1) - log_m)
    lme = {"genfast": lambda: ops.logmeanexp(a),
           "torch": lambda: torch.logsumexp(a, 1) - log_m,
           "torch.compile": lambda: compiled(a)}
    if args.device == "cpu":
        lme["scipy"] = (lambda: scipy_special.logsumexp(a_np, axis=1) - log_m) if scipy_special else scipy_why

    x = (torch.rand(Bw, D, generator=g) < 0.3).float().to(device)
    logits = (3 * torch.randn(Bw, m, D, generator=g)).to(device)
    log_prior, log_q = torch.randn(Bw, m, generator=g).to(device), torch.randn(Bw, m, generator=g).to(device)
    F = torch.nn.functional

    def torch_weights():
        rec = -F.binary_cross_entropy_with_logits(logits, x[:, None, :].expand_as(logits), reduction="none").sum(2)
        return rec + log_prior - log_q

    weights = {"genfast": lambda: ops.log_importance_weights(x, logits, log_prior, log_q),
               "torch": torch_weights,
               "torch.compile": torch.compile(torch_weights)}

    try:
        for case, peers, nbytes in (("logmeanexp", lme, 4 * B * M), ("log_importance_weights", weights, 4 * Bw * m * D)):
            reference = None
            rows = []
            for peer, fn in peers.items():
                if isinstance(fn, str):  # a peer that is not installed: its reason
                    rows.append({"case": case, "peer": peer, "status": "skipped", "reason": fn})
                    continue
                try:
                    t = H.time_call(fn, repeats=repeats, warmup=2, sync=sync)
                    out = np.asarray(t.output.cpu() if torch.is_tensor(t.output) else t.output, dtype=np.float64)
                    reference = out if reference is None else reference
                    row = {"case": case, "peer": peer, "status": "ok", "median_s": t.median, "min_s": t.min,
                           "GB_per_s": nbytes / t.median / 1e9, "compile_or_warmup_s": max(t.warmup),
                           "max_abs_diff_vs_genfast": float(np.max(np.abs(out - reference)))}
                except Exception:  # noqa: BLE001 - a failing peer is reported, the others still run
                    errors += 1
                    row = {"case": case, "peer": peer, "status": "error", "traceback": traceback.format_exc()}
                rows.append(row)
            base = rows[0].get("median_s")
            for row in rows:
                if base and "median_s" in row:
                    row["genfast_speedup"] = row["median_s"] / base
                print(f"{case:24s} {row['peer']:14s} " + (f"{row['median_s'] * 1e3:9.3f} ms  {row['GB_per_s']:6.2f} GB/s  "
                      f"genfast {row['genfast_speedup']:.2f}x faster  max|diff| {row['max_abs_diff_vs_genfast']:.2e}"
                      if "median_s" in row else row["status"].upper() + f" {row.get('reason', '')}"))
            record["cases"].extend(rows)
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
    H.close_record(record, threads, warn)
    return H.finish(NAME, args.device, record, errors, out_dir=args.out, no_json=args.no_json)


if __name__ == "__main__":
    sys.exit(main())
