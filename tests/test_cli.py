"""`genfast demo` and `genfast bench` (python -m genfast): the demo's numbers, its figure,
the benchmark runner's JSON and skipped peers, and clear errors for bad arguments."""

import contextlib
import io
import json
import math
import pathlib
import subprocess
import sys

import pytest

from genfast.__main__ import main

REPO = pathlib.Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- demo
@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One quick demo on 400 digits (each test reads what it wrote)."""
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("demo")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["demo", "--quick", "--n-digits", "400", "--seed", "3", "--out", str(out)]) == 0
    result = json.loads((out / "genfast-demo.json").read_text())
    return out, result, {row["key"]: row for row in result["rows"]}, stdout.getvalue()


def _missing(name):
    import importlib.util

    return importlib.util.find_spec(name) is None


def test_demo_table_lists_every_step(demo_run):
    _, result, _, stdout = demo_run
    assert len(result["rows"]) == 6
    for row in result["rows"]:
        assert row["step"] in stdout
        for key in ("value", "genfast_s", "reference_s"):
            assert math.isfinite(row[key]), (row["step"], key)
        assert row["genfast_s"] > 0 and row["reference_s"] > 0
    assert result["n_train"] + result["n_test"] == 400 and result["seed"] == 3 and result["threads"] == 1
    assert "Every implementation ran on 1 CPU thread." in stdout


def test_demo_models_agree_with_the_reference(demo_run):
    _, _, rows, _ = demo_run
    for name in ("gaussian", "gmm"):
        row = rows[name]
        assert abs(row["value"] - row["reference_value"]) <= 1e-6 * (1 + abs(row["reference_value"])), name
        assert abs(row["value"] - row["sklearn_value"]) <= 1e-3 * (1 + abs(row["sklearn_value"])), name
    # the digits' pixels are multiples of 1/16, so a point can be exactly as far from two
    # centres, and rounding breaks such ties differently: Lloyd may reach another local optimum
    km = rows["kmeans"]
    assert abs(km["value"] - km["reference_value"]) <= 0.05 * km["reference_value"]
    for name in ("prior", "posterior"):  # same draws, float32 against float64
        assert abs(rows[name]["value"] - rows[name]["reference_value"]) < 1e-3, name


def test_demo_values_are_sensible(demo_run):
    _, _, rows, _ = demo_run
    # ten components explain held-out digits better than one Gaussian
    assert rows["gmm"]["value"] > rows["gaussian"]["value"] + 5
    assert 0 < rows["kmeans"]["value"] < 8  # mean squared distance; the pixels lie in [0, 1]^64
    prior, posterior, elbo = rows["prior"], rows["posterior"], rows["vae"]["value"]
    for row in (prior, posterior):
        assert 1 <= row["ess"] <= row["n_samples"] and row["std_error"] > 0
        assert row["value"] < 0  # a Bernoulli likelihood of 64 pixels
    # importance sampling: a tighter bound than the one-sample ELBO; both estimate the same log p(x)
    assert posterior["value"] > elbo - 0.5
    assert abs(posterior["value"] - prior["value"]) < 5 * (posterior["std_error"] + prior["std_error"]) + 0.5


def test_demo_figure(demo_run):
    out, result, _, stdout = demo_run
    png = out / "genfast-demo.png"
    if _missing("matplotlib"):
        assert result["figure"] is None and not png.exists() and "matplotlib is not installed" in stdout
        return
    assert result["figure"] == str(png) and f"wrote the figure to {png}" in stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_demo_without_matplotlib_says_so(monkeypatch, tmp_path, capsys):
    from genfast import demo

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert demo.write_figure(tmp_path / "x.png", None, None, None, None, 0) is False
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------- bench
def test_bench_writes_json_and_reports_a_missing_peer_as_skipped(monkeypatch, tmp_path, capsys):
    from genfast import bench

    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    status = bench.run(["kmeans"], quick=True, out=tmp_path,
                       family_args={"kmeans": ["--sizes", "3000,8,16", "--peers", "genfast,sklearn,faiss", "--square", "256"]})
    assert status == 0
    record = json.loads((tmp_path / "kmeans-cpu-latest.json").read_text())
    results = {r["peer"]: r for r in record["cases"][0]["results"]}
    assert results["faiss"]["status"] == "skipped" and "faiss" in results["faiss"]["reason"]
    assert results["genfast"]["status"] == results["sklearn"]["status"] == "ok"
    summary = json.loads((tmp_path / "summary-cpu-latest.json").read_text())
    rows = {r["peer"]: r for r in summary["rows"]}
    assert rows["faiss"]["status"] == "skipped"
    assert rows["sklearn"]["ratio"] == pytest.approx(rows["sklearn"]["peer_s"] / rows["sklearn"]["genfast_s"])
    assert 0 < rows["sklearn"]["of_ceiling"]
    table = capsys.readouterr().out
    assert "peer / genfast" in table and "skipped: faiss is not installed" in table


def test_bench_reports_a_benchmark_that_cannot_run_as_skipped(monkeypatch, tmp_path, capsys):
    from genfast import bench

    monkeypatch.setitem(sys.modules, "torch", None)
    assert bench.run(["elbo", "mc"], quick=True, out=tmp_path) == 0
    rows = json.loads((tmp_path / "summary-cpu-latest.json").read_text())["rows"]
    assert [(r["benchmark"], r["status"]) for r in rows] == [("elbo", "skipped"), ("mc", "skipped")]
    assert all("needs torch" in r["note"] for r in rows)


def test_benchmark_scripts_still_run_from_the_repository():
    script = REPO / "benchmarks" / "bench_kmeans.py"
    if not script.exists():
        pytest.skip("not a repository checkout")
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--quick" in out.stdout


# --------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("argv, message", [
    (["demo", "--seed", "-1"], "--seed: expected a non-negative integer, got -1"),
    (["demo", "--seed", "one"], "--seed: expected a non-negative integer, got 'one'"),
    (["demo", "--device", "tpu"], "--device: invalid choice: 'tpu'"),
    (["demo", "--n-digits", "5"], "need at least 12 digits"),
    (["demo", "--threads", "0"], "--threads: expected a positive integer, got 0"),
    (["bench", "--only", "kmeans,knn"], "--only: expected a comma-separated list of kmeans, gmm, elbo, mc, dask"),
    (["bench", "--device", "tpu"], "--device: invalid choice: 'tpu'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_arguments_exit_2_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--quick", "--plot"])
    assert exc.value.code == 2 and "--plot needs matplotlib" in capsys.readouterr().err


def test_demo_on_cuda_without_a_gpu_is_a_clear_error(capsys):
    import genfast

    if genfast.config()["cuda"]["usable"]:
        pytest.skip("a CUDA device is usable here")
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--device", "cuda"])
    assert exc.value.code == 2 and "--device cuda needs a usable CUDA device" in capsys.readouterr().err
