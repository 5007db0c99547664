"""genfast's benchmarks, one module per family, run by ``genfast bench`` or on their own
(``python -m genfast.bench.kmeans --quick``; ``benchmarks/bench_*.py`` in the repository call
the same ``main``):

- ``kmeans``: Lloyd k-means against scikit-learn, faiss, torch and torch.compile; numpy's matmul
  rate as the ceiling.
- ``gmm``: EM for Gaussian mixtures against scikit-learn, torch and torch.compile; the E-step's
  flops at numpy's matmul rate as the floor.
- ``elbo``: the VAE ELBO training step against torch eager and torch.compile; the copy bandwidth
  as the ceiling.
- ``mc``: log-mean-exp and log importance weights against torch, torch.compile and scipy.
- ``dask``: genfast.dask.KMeans against dask-ml on a LocalCluster.

:func:`run` runs the chosen families in this process, each writing its JSON, and prints one
summary table: per case and peer, genfast's time, the peer's, their ratio and the fraction of
the machine's ceiling genfast reaches where the benchmark measures one.
"""

from __future__ import annotations

import importlib
import traceback

from . import _harness as H

FAMILIES = ("kmeans", "gmm", "elbo", "mc", "dask")
CPU_ONLY = ("mc", "dask")


def have_matplotlib() -> bool:
    module, _ = H.try_import("matplotlib")
    return module is not None


# --------------------------------------------------------------------------- summary rows
def _peer_rows(family, case, results, reference, seconds, ceiling=lambda r: None):
    """Summary rows of one case: genfast's reference peer against each other peer."""
    ref = next((r for r in results if r["peer"] == reference and r.get("status", "ok") == "ok"), None)
    ref_s = seconds(ref) if ref else None
    base = {"benchmark": family, "case": case, "genfast_peer": reference, "genfast_s": ref_s,
            "of_ceiling": ceiling(ref) if ref else None}
    others = [r for r in results if r["peer"] != reference] or ([ref] if ref else [])
    for r in others:
        row = dict(base, peer=r["peer"], status=r.get("status", "ok"))
        if row["status"] == "ok":
            row["peer_s"] = seconds(r)
            row["ratio"] = row["peer_s"] / ref_s if ref_s else None
        else:
            row["note"] = r.get("reason") or "failed (traceback in the JSON)"
        yield row


def _kmeans_rows(record):
    for c in record["cases"]:
        yield from _peer_rows("kmeans", f"N={c['N']:,} D={c['D']} K={c['K']}", c["results"], c["reference_peer"],
                              lambda r: r["seconds_per_iter"]["median"], lambda r: r.get("fraction_of_matmul"))


def _gmm_rows(record):
    for c in record["cases"]:
        for run in c["runs"]:
            floor = (run.get("floor") or {}).get("seconds")
            yield from _peer_rows("gmm", f"{run['covariance_type']} {run['dtype']} N={c['N']:,} D={c['D']} K={c['K']}",
                                  run["results"], "genfast", lambda r: r["seconds_per_iter"]["median"],
                                  lambda r: floor / r["seconds_per_iter"]["median"] if floor else None)


def _elbo_rows(record):
    for c in record["cases"]:
        yield from _peer_rows("elbo", f"{c['likelihood']} B={c['B']} D={c['D']} L={c['L']}", c["results"],
                              c["reference_peer"], lambda r: r["ms"] / 1e3, lambda r: r.get("of_copy"))


def _mc_rows(record):
    cases = dict.fromkeys(r["case"] for r in record["cases"])
    for case in cases:
        yield from _peer_rows("mc", case, [r for r in record["cases"] if r["case"] == case], "genfast",
                              lambda r: r["median_s"])


def _dask_rows(record):
    for c in record["cases"]:
        yield from _peer_rows("dask", f"N={c['N']:,} D={c['D']} K={c['K']}", c["results"], "genfast.dask",
                              lambda r: r["seconds_per_iter"]["median"])


SUMMARY_ROWS = {"kmeans": _kmeans_rows, "gmm": _gmm_rows, "elbo": _elbo_rows, "mc": _mc_rows, "dask": _dask_rows}


def _time(v):
    return f"{v * 1e3:.3g} ms" if v < 1 else f"{v:.3g} s"


SUMMARY_COLUMNS = [
    H.Column("benchmark", "benchmark", align="<"),
    H.Column("case", "case", align="<"),
    H.Column("genfast", "genfast_s", _time),
    H.Column("peer", "peer", align="<"),
    H.Column("peer time", "peer_s", _time),
    H.Column("peer / genfast", "ratio", "{:.2f}x"),
    H.Column("genfast of ceiling", "of_ceiling", "{:.0%}"),
    H.Column("note", "note", align="<"),
]


# --------------------------------------------------------------------------- plot
def write_plot(rows, path) -> None:
    """Horizontal bars of peer time / genfast time (log scale) for every peer that ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.get("ratio")]
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(ok) + 1.2))
    labels = [f"{r['benchmark']}: {r['case']} - {r['peer']}" for r in ok]
    ax.barh(range(len(ok)), [r["ratio"] for r in ok], color=["tab:blue" if r["ratio"] >= 1 else "tab:red" for r in ok])
    ax.set_yticks(range(len(ok)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("peer time / genfast time (right of 1: genfast is faster)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- driver
def run(families=FAMILIES, *, quick: bool = False, device: str = "cpu", out="benchmarks/results",
        plot: bool = False, family_args: dict | None = None) -> int:
    """Run the benchmark families in this process and print the summary; the exit status is 1
    when a benchmark or a peer failed, else 0. family_args: more command-line arguments for a
    family's own parser, e.g. {"kmeans": ["--sizes", "5000,8,16"]}."""
    rows, status = [], 0
    for family in families:
        print(f"\n=== {family} " + "=" * 60, flush=True)
        H.LAST_RUN.pop(family, None)
        if device == "cuda" and family in CPU_ONLY:
            rows.append({"benchmark": family, "status": "skipped", "note": "runs on the CPU only"})
            print("skipping: runs on the CPU only")
            continue
        argv = ["--out", str(out)] + (["--quick"] if quick else []) + \
            (["--device", device] if family not in CPU_ONLY else []) + list((family_args or {}).get(family, []))
        try:
            code = importlib.import_module(f"{__name__}.{family}").main(argv)
        except Exception as e:  # noqa: BLE001 - one broken benchmark must not hide the others
            traceback.print_exc()
            rows.append({"benchmark": family, "status": "error", "note": f"{type(e).__name__}: {e}"})
            status = 1
            continue
        status = max(status, code)
        last = H.LAST_RUN.get(family, {})
        if "skipped" in last:
            rows.append({"benchmark": family, "status": "skipped", "note": last["skipped"]})
        elif "record" in last:
            rows.extend(SUMMARY_ROWS[family](last["record"]))
    for r in rows:
        if r.get("status", "ok") != "ok":
            r["note"] = f"{r['status']}: {r.get('note', '')}"
    record = H.base_record("summary", device)
    record["settings"] = {"families": list(families), "quick": quick}
    record["rows"] = rows
    print("\n=== summary (" + device + "): genfast against each peer, median times " + "=" * 20)
    print(H.describe_machine(record))
    H.print_table(SUMMARY_COLUMNS, rows)
    print("ratio > 1: genfast is faster. ceiling: k-means - numpy's matmul rate; gmm - the E-step's flops at "
          "that rate; elbo - the copy bandwidth.")
    path, _ = H.write_results("summary", device, record, out)
    print(f"\nwrote {path}")
    if plot:
        png = path.with_suffix(".png")
        write_plot(rows, png)
        print(f"wrote {png}")
    return status
