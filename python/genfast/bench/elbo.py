"""VAE ELBO benchmark: genfast.torch.elbo against the same loss in torch eager and torch.compile.

One training step's ELBO work, forward and backward, float32: the negative batch-mean ELBO of
a (B, D) batch with (B, L) latents, `loss.backward()` to the decoder output (and the Gaussian
decoder's log-variance) and to the posterior mean and log-variance. Every peer gets the same
tensors and the same threads and is timed the same way, and its loss and gradients are
compared with genfast's. The effective bandwidth (bytes of inputs read and gradients written,
once each) is set against the machine's copy bandwidth, measured in the same run.

    python benchmarks/bench_elbo.py --quick       # small batch, a few seconds (+ compilation)
    python benchmarks/bench_elbo.py               # B=4096, D=784, L=64 (issue 4)
    python benchmarks/bench_elbo.py --device cuda # the same on the GPU (needs torch with CUDA)
    python benchmarks/bench_elbo.py --peers genfast,torch --likelihoods gaussian

Results are printed as a table and written as JSON to
benchmarks/results/elbo-<device>-<UTC timestamp>.json (and elbo-<device>-latest.json).
See benchmarks/README.md for the columns.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
import traceback

from . import _harness as H  # noqa: E402

NAME = "elbo"
FULL_SIZES = [(4096, 784, 64)]
QUICK_SIZES = [(512, 784, 64)]
LIKELIHOODS = ["bernoulli", "gaussian"]
BETA = 1.0
#: Row names, in table order.
PEERS = ["genfast", "genfast kernel", "torch", "torch.compile"]
PEER_ALIASES = {"genfast": ["genfast", "genfast kernel"], "genfast-kernel": ["genfast kernel"],
                "torch": ["torch"], "torch.compile": ["torch.compile"], "torch-compile": ["torch.compile"]}
#: Issue 4's targets: speed-up of genfast over each peer (CPU), fraction of copy bandwidth (CUDA).
TARGET_SPEEDUP = {"torch": 4.0, "torch.compile": 2.0}
TARGET_COPY_FRACTION_CUDA = 0.7
#: Bytes of the copy-bandwidth buffer: far larger than any last-level cache.
COPY_BYTES = 512 * 2**20


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See benchmarks/README.md for the columns and the JSON layout.")
    p.add_argument("--quick", action="store_true", help="B=512 D=784 L=64, fewer repeats")
    p.add_argument("--sizes", type=parse_sizes, default=None, metavar="B,D,L;...",
                   help="batch, data and latent sizes (default 4096,784,64)")
    p.add_argument("--likelihoods", type=lambda t: _choices(t, LIKELIHOODS, "likelihood"),
                   default=list(LIKELIHOODS), metavar="LIST", help="subset of bernoulli,gaussian")
    p.add_argument("--peers", type=lambda text: H.parse_peers(text, PEER_ALIASES, PEERS),
                   default=list(PEERS), metavar="LIST",
                   help="subset of genfast,genfast-kernel,torch,torch.compile (default all; "
                        "'genfast' means both genfast rows)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats per peer, the median is reported (default 15, --quick 5)")
    p.add_argument("--steps", type=int, default=None,
                   help="forward+backward steps per repeat (default 10, --quick 5)")
    p.add_argument("--threads", type=int, default=None, help="threads for every peer (default: all usable CPUs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data")
    p.add_argument("--out", default=str(H.RESULTS_DIR), help="folder for the JSON results")
    p.add_argument("--no-json", action="store_true", help="print the tables only")
    return p


def parse_sizes(text: str) -> list[tuple[int, int, int]]:
    sizes = []
    for part in filter(str.strip, text.split(";")):
        fields = [H._int_arg(f) for f in part.split(",")]
        if len(fields) != 3 or min(fields) < 1:
            raise argparse.ArgumentTypeError(f"each size is B,D,L with every value >= 1 (got {part!r})")
        sizes.append(tuple(fields))
    if not sizes:
        raise argparse.ArgumentTypeError("no sizes given")
    return sizes


def _choices(text, allowed, what):
    chosen = [t.strip().lower() for t in text.split(",") if t.strip()]
    bad = [c for c in chosen if c not in allowed]
    if bad or not chosen:
        raise argparse.ArgumentTypeError(f"unknown {what} {bad}; choose from {','.join(allowed)}")
    return [a for a in allowed if a in chosen]


# --------------------------------------------------------------------------- the work
def make_inputs(torch, B, D, L, likelihood, device, seed):
    """Float32 inputs every peer shares: x (binary for the Bernoulli), the decoder output
    (logits or means), the Gaussian decoder's log-variance, mu, logvar; all but x are leaves
    that require grad."""
    g = torch.Generator().manual_seed(seed)
    if likelihood == "bernoulli":
        x = (torch.rand(B, D, generator=g) < 0.3).float()
        out = 3.0 * torch.randn(B, D, generator=g)
        out_logvar = None
    else:
        x = torch.randn(B, D, generator=g)
        out = x + 0.5 * torch.randn(B, D, generator=g)
        out_logvar = torch.rand(B, D, generator=g) * 2 - 1
    mu, logvar = torch.randn(B, L, generator=g), torch.rand(B, L, generator=g) * 2 - 1
    leaves = [t.to(device).requires_grad_() for t in (out, out_logvar, mu, logvar) if t is not None]
    return x.to(device), leaves


def torch_loss(torch, likelihood):
    """The negative batch-mean ELBO in plain torch: BCE-with-logits or the Gaussian
    log-density with per-element log-variance, and the closed-form KL."""
    F = torch.nn.functional
    log_2pi = math.log(2 * math.pi)

    def loss(x, out, *rest):
        if likelihood == "bernoulli":
            mu, logvar = rest
            rec = -F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(1)
        else:
            out_logvar, mu, logvar = rest
            rec = -0.5 * (log_2pi + out_logvar + (x - out) ** 2 * torch.exp(-out_logvar)).sum(1)
        kl = 0.5 * (mu * mu + torch.exp(logvar) - logvar - 1).sum(1)
        return -(rec - BETA * kl).mean()

    return loss


def genfast_loss(gt, likelihood):
    def loss(x, out, *rest):
        if likelihood == "bernoulli":
            return -gt.elbo(x, out, *rest, beta=BETA)
        out_logvar, mu, logvar = rest
        return -gt.elbo(x, out, mu, logvar, "gaussian", BETA, decoder_logvar=out_logvar)

    return loss


def bytes_moved(B, D, L, likelihood) -> int:
    """Inputs read and gradients written once each, float32: x, decoder output (and log-variance),
    mu, logvar read; the gradients of all but x written."""
    data_arrays = 2 + 2 if likelihood == "bernoulli" else 3 + 2 * 2
    return 4 * (data_arrays * B * D + 4 * B * L)


def copy_bandwidth(torch, device, repeats, sync):
    """GB/s of a large tensor copy (bytes read + bytes written), best of the repeats."""
    n = COPY_BYTES // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    t = H.time_call(lambda: dst.copy_(src), repeats=max(3, repeats), warmup=1, sync=sync)
    return {"bytes": 2 * 4 * n, "seconds": t.as_dict(), "gbps_best": 2 * 4 * n / t.min / 1e9,
            "gbps_median": 2 * 4 * n / t.median / 1e9, "how": f"torch: dst.copy_(src), {4 * n / 2**20:.0f} MiB float32"}


class Skip(Exception):
    pass


def prepare_peer(peer, torch, gt, ops, x, leaves, likelihood, sync):
    """(one training step of the peer, a function from its output to (loss, gradients),
    notes, extra). torch.compile compiles here, outside any timing."""
    notes, extra = [], {}
    order = ["decoder_out", "decoder_logvar", "mu", "logvar"] if likelihood == "gaussian" else ["decoder_out", "mu", "logvar"]

    def step(loss_fn):
        def one():
            for t in leaves:
                t.grad = None
            loss = loss_fn(x, *leaves)
            loss.backward()
            return loss
        return one

    def from_autograd(loss):
        return loss, [t.grad for t in leaves]

    if peer == "genfast":
        if gt is None:
            raise Skip("genfast.torch is not importable")
        return step(genfast_loss(gt, likelihood)), from_autograd, notes, extra
    if peer == "genfast kernel":
        if ops is None or not hasattr(ops, "elbo"):
            raise Skip("genfast.ops.elbo is not in this genfast build")
        kw = dict(zip(order, (t.detach() for t in leaves)))
        notes.append("genfast.ops.elbo(..., gradients=True): the fused kernel alone, no autograd; "
                     "gradients of the summed ELBO")

        def kernel():
            e, _, _, grads = ops.elbo(x, likelihood=likelihood, beta=BETA, gradients=True, check_finite=False, **kw)
            return -e.mean(), grads

        def loss_and_gradients(out):  # d(-mean ELBO) from d(sum ELBO), outside the timing
            return out[0], [-out[1][n] / x.shape[0] for n in order]
        return kernel, loss_and_gradients, notes, extra
    if peer == "torch":
        return step(torch_loss(torch, likelihood)), from_autograd, notes, extra
    torch._dynamo.reset()
    fn = step(torch.compile(torch_loss(torch, likelihood), dynamic=False))
    start = time.perf_counter()
    fn()
    sync()
    extra["compile_seconds"] = time.perf_counter() - start
    notes.append(f"compiled in {extra['compile_seconds']:.1f} s (not timed)")
    return fn, from_autograd, notes, extra


def time_interleaved(fns: dict, args, sync) -> dict:
    """Timing of `args.steps` calls per repeat for each peer, the peers taking turns repeat by
    repeat (so that a busy moment of the machine falls on all of them alike): one untimed
    repeat each first."""
    samples = {peer: [] for peer in fns}
    warmup = {peer: [] for peer in fns}
    outputs = {}
    for r in range(args.repeats + 1):
        for peer, fn in fns.items():
            gc.collect()
            sync()
            start = time.perf_counter()
            for _ in range(args.steps):
                out = None  # the previous step's results are gone before the next allocates
                out = fn()
            sync()
            (samples if r else warmup)[peer].append(time.perf_counter() - start)
            outputs[peer] = out
    return {peer: (H.Timing(samples=samples[peer], warmup=warmup[peer]), outputs[peer]) for peer in fns}


def max_rel_diff(torch, a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def run_case(torch, gt, ops, B, D, L, likelihood, args, copy, sync):
    x, leaves = make_inputs(torch, B, D, L, likelihood, args.device, args.seed)
    nbytes = bytes_moved(B, D, L, likelihood)
    rows, prepared = {}, {}
    for peer in args.peers:
        rows[peer] = {"peer": peer, "status": "ok"}
        try:
            prepared[peer] = prepare_peer(peer, torch, gt, ops, x, leaves, likelihood, sync)
        except Skip as e:
            rows[peer].update(status="skipped", reason=str(e))
        except Exception as e:  # a failing peer is reported, the others still run
            rows[peer].update(status="error", reason=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
    timings = time_interleaved({peer: p[0] for peer, p in prepared.items()}, args, sync)
    reference = None
    for peer, (t, out) in timings.items():
        loss, grads = prepared[peer][1](out)
        loss, grads = float(loss.detach()), [g.detach().clone() for g in grads]
        seconds = t.scaled(1.0 / args.steps)
        row = rows[peer]
        row.update(seconds_per_step=seconds, loss=loss, notes=prepared[peer][2], extra=prepared[peer][3],
                   ms=1e3 * seconds["median"], gbps=nbytes / seconds["median"] / 1e9)
        row["of_copy"] = row["gbps"] / copy["gbps_best"]
        if reference is None:
            reference = (peer, loss, grads)
        row["loss_rel_diff"] = abs(loss - reference[1]) / abs(reference[1])
        row["grad_max_rel_diff"] = max(max_rel_diff(torch, g, r) for g, r in zip(grads, reference[2]))
    results = list(rows.values())
    ms = {r["peer"]: r.get("ms") for r in results}
    base = ms.get("genfast")
    for r in results:
        r["genfast_speedup"] = r["ms"] / base if base and r.get("ms") else None
    summary = {"likelihood": likelihood, "B": B, "D": D, "L": L, "bytes": nbytes,
               "genfast_ms": base, "genfast_gbps": rows.get("genfast", {}).get("gbps")}
    for peer, target in TARGET_SPEEDUP.items():
        if base and ms.get(peer):
            summary[f"speedup_vs_{peer}"] = ms[peer] / base
            summary[f"target_vs_{peer}"] = target
    if summary["genfast_gbps"]:
        summary["genfast_of_copy"] = summary["genfast_gbps"] / copy["gbps_best"]
    return {"likelihood": likelihood, "B": B, "D": D, "L": L, "bytes_moved": nbytes,
            "reference_peer": reference[0] if reference else None, "results": results, "summary": summary}


COLUMNS = [
    H.Column("peer", "peer", align="<"),
    H.Column("ms/step", "ms", "{:.2f}"),
    H.Column("GB/s", "gbps", "{:.1f}"),
    H.Column("of copy", "of_copy", "{:.0%}"),
    H.Column("vs genfast", "genfast_speedup", "{:.2f}x"),
    H.Column("loss diff", "loss_rel_diff", "{:.1e}"),
    H.Column("grad diff", "grad_max_rel_diff", "{:.1e}"),
    H.Column("note", "note", align="<"),
]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.repeats = args.repeats or (5 if args.quick else 15)
    args.steps = args.steps or (5 if args.quick else 10)
    if args.repeats < 1 or args.steps < 1:
        print("--repeats and --steps must be >= 1", file=sys.stderr)
        return 2
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    mods = H.import_modules({"torch", "genfast", "genfast.torch"})
    torch = mods.get("torch")
    if torch is None:
        return H.skip(NAME, f"this benchmark needs torch ({mods['_why']['torch']})")
    if args.device == "cuda":
        why = H.cuda_skip_reason(torch)
        if why:
            return H.skip(NAME, why)
    cuda = args.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    gt = mods.get("genfast.torch")
    ops = mods["genfast"].ops if mods.get("genfast") is not None else None

    threads = args.threads or H._cpu_info()["usable_cpus"] or 1
    warn = H.busy_warning(threads)
    limiter = H.limit_threads(threads)
    try:
        torch.set_num_threads(threads)
        record = H.base_record(NAME, args.device)
        print(f"genfast ELBO benchmark ({args.device}); " + H.describe_machine(record))
        if warn:
            print(warn)
        record["settings"] = {
            "quick": args.quick, "sizes": [list(s) for s in sizes], "likelihoods": args.likelihoods,
            "peers": args.peers, "repeats": args.repeats, "steps_per_repeat": args.steps, "dtype": "float32",
            "beta": BETA, "seed": args.seed, "reduction": "mean over the batch",
            "step": "grads set to None; loss = -ELBO (batch mean); loss.backward()",
            "statistic": "median over repeats of (repeat seconds / steps)",
            "order": "interleaved: each repeat times every peer in turn",
            "warmup": "one untimed repeat per peer (and torch.compile's compilation before it)",
            "timer": "time.perf_counter" + (", torch.cuda.synchronize() before reading it" if cuda else ""),
            "bytes_moved": "float32 inputs read once + gradients written once",
            "target_speedup": TARGET_SPEEDUP, "target_copy_fraction_cuda": TARGET_COPY_FRACTION_CUDA,
        }
        record["fairness"] = {"threads_per_peer": threads, "thread_controls": {
            "torch": f"torch.set_num_threads({threads})", "OpenMP": f"threadpoolctl.threadpool_limits({threads})"},
            "same_tensors_for_every_peer": True}
        record["threadpools"] = H.threadpool_info()
        copy = copy_bandwidth(torch, args.device, args.repeats, sync)
        record["copy_bandwidth"] = copy
        print(f"copy bandwidth: {copy['gbps_best']:.1f} GB/s ({copy['how']}, best of {max(3, args.repeats)})")
        record["cases"] = []
        for B, D, L in sizes:
            for likelihood in args.likelihoods:
                case = run_case(torch, gt, ops, B, D, L, likelihood, args, copy, sync)
                record["cases"].append(case)
                for r in case["results"]:
                    r["note"] = "; ".join(r.get("notes", [])) if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
                H.print_table(COLUMNS, case["results"],
                              title=f"\n{likelihood}, B={B} D={D} L={L}, float32, forward+backward "
                                    f"({case['bytes_moved'] / 1e6:.1f} MB moved per step)")
        print("\nsummary: genfast speed-up per step (issue 4 target: >= 4x torch eager, >= 2x torch.compile"
              + (f", >= {TARGET_COPY_FRACTION_CUDA:.0%} of copy bandwidth on CUDA)" if cuda else ")"))
        for case in record["cases"]:
            s = case["summary"]
            parts = [f"{k[len('speedup_vs_'):]} {v:.2f}x" for k, v in s.items() if k.startswith("speedup_vs_")]
            if s.get("genfast_of_copy") is not None:
                parts.append(f"{s['genfast_gbps']:.1f} GB/s = {s['genfast_of_copy']:.0%} of copy")
            print(f"  {s['likelihood']:<9} B={s['B']} D={s['D']} L={s['L']}: " + ", ".join(parts))
        H.close_record(record, threads, warn)
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
    errors = sum(r["status"] == "error" for c in record["cases"] for r in c["results"])
    return H.finish(NAME, args.device, record, errors, out_dir=args.out, no_json=args.no_json)


if __name__ == "__main__":
    sys.exit(main())
