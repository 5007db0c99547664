"""Command line: ``python -m genfast`` (also installed as ``genfast``).

    genfast demo      one Gaussian, k-means, a Gaussian mixture and a VAE on scikit-learn's digits:
                      held-out scores, genfast against numpy and scikit-learn, and a figure
    genfast bench     the benchmarks (k-means, GMM, ELBO, Monte Carlo, Dask) against their peers
    genfast config    print the build and runtime configuration (genfast.show_config())
"""

from __future__ import annotations

import argparse
import importlib.util

from ._config import show_config
from .bench import FAMILIES as BENCH_FAMILIES


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def _threads(text: str) -> int:
    value = _seed(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _n_digits(text: str) -> int:
    value = _seed(text)
    if value < 12:
        raise argparse.ArgumentTypeError(f"need at least 12 digits, got {value}")
    return value


def _families(text: str) -> list[str]:
    chosen = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in BENCH_FAMILIES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(BENCH_FAMILIES)}, got {text!r}")
    return [name for name in BENCH_FAMILIES if name in chosen]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genfast", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("config", help="print what was built and what this process can use")

    demo = sub.add_parser("demo", help="the models on scikit-learn's digits, timed, with a figure",
                          description="Fit one Gaussian, KMeans, a GaussianMixture and a VAE on scikit-learn's "
                                      "bundled digits; print held-out scores and times against numpy and "
                                      "scikit-learn; write a PNG figure (with matplotlib) and the numbers as JSON.")
    demo.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                      help="where genfast runs (default: cuda when usable, else cpu)")
    demo.add_argument("--quick", action="store_true", help="fewer VAE epochs and Monte Carlo samples")
    demo.add_argument("--out", default="genfast-demo", metavar="DIR",
                      help="folder for genfast-demo.png and genfast-demo.json (default ./genfast-demo)")
    demo.add_argument("--seed", type=_seed, default=0, help="seed of the split, initialisations and draws")
    demo.add_argument("--threads", type=_threads, default=1,
                      help="CPU threads for every implementation (default 1: on 1,500 digits of 64 pixels more "
                           "threads cost more than they save, most of all on a busy machine)")
    demo.add_argument("--n-digits", type=_n_digits, default=None, help=argparse.SUPPRESS)  # tests: a subset

    bench = sub.add_parser("bench", help="time genfast against its peers; JSON under benchmarks/results",
                           description="Run the benchmark modules in one process and print one summary table "
                                       "of genfast against each peer. Peers that are not installed are skipped.")
    bench.add_argument("--quick", action="store_true", help="small sizes and few repeats (a smoke run)")
    bench.add_argument("--only", type=_families, default=list(BENCH_FAMILIES), metavar="LIST",
                       help=f"comma-separated subset of {','.join(BENCH_FAMILIES)} (default: all)")
    bench.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where genfast runs (default cpu)")
    bench.add_argument("--out", default="benchmarks/results", metavar="DIR",
                       help="folder for the JSON results (default ./benchmarks/results)")
    bench.add_argument("--plot", action="store_true", help="also write a PNG chart of the ratios (needs matplotlib)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in (None, "config"):
        show_config()
        return 0
    if args.command == "demo":
        import genfast

        if args.device == "cuda" and not genfast.config()["cuda"]["usable"]:
            parser.error(f"--device cuda needs a usable CUDA device: {genfast.config()['cuda']['status']}")
        if importlib.util.find_spec("torch") is None:  # the VAE steps need it
            parser.error('genfast demo needs torch for its VAE steps: pip install "genfast[demo]"')
        from . import demo

        demo.run(device=args.device, quick=args.quick, out=args.out, seed=args.seed, threads=args.threads,
                 n_digits=args.n_digits)
        return 0
    from . import bench

    if args.plot and not bench.have_matplotlib():
        parser.error("--plot needs matplotlib: pip install \"genfast[demo]\"")
    return bench.run(args.only, quick=args.quick, device=args.device, out=args.out, plot=args.plot)


if __name__ == "__main__":
    raise SystemExit(main())
