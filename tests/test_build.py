"""What was built and what the process can use: genfast.config(), genfast.show_config(),
the _core build info, and that `import genfast` stays light (never imports torch)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

import genfast
from genfast import _backend, _core


def test_version_consistent():
    assert isinstance(genfast.__version__, str) and genfast.__version__
    assert genfast.__version__ == genfast.config()["version"] == _core.build_info()["version"]
    assert genfast.__version__ == importlib.metadata.version("genfast")


def test_config_keys_and_types():
    info = genfast.config()
    assert {"version", "python", "platform", "backends", "cpu", "cuda"} <= set(info)
    assert info["backends"][0] == "cpu"
    assert set(info["backends"]) <= {"cpu", "cuda"}
    cpu = info["cpu"]
    assert {"compiler", "flags", "simd", "openmp", "openmp_threads", "OMP_NUM_THREADS"} <= set(cpu)
    assert isinstance(cpu["openmp_threads"], int) and cpu["openmp_threads"] >= 1
    assert cpu["openmp_threads"] == _core.openmp_max_threads()
    assert cpu["simd"] and cpu["compiler"] and cpu["openmp"]
    cuda = info["cuda"]
    assert {"built", "usable", "status"} <= set(cuda)
    assert cuda["built"] == ("cuda" in info["backends"]) == (_backend._cuda is not None)
    usable, why = _backend.cuda_status()
    assert cuda["usable"] is usable and cuda["status"] == why
    assert isinstance(why, str) and why
    if not cuda["built"]:
        assert cuda["usable"] is False


def test_show_config_prints_everything(capsys):
    genfast.show_config()
    out = capsys.readouterr().out
    info = genfast.config()
    assert f"genfast {info['version']}" in out
    assert "backends built: " + ", ".join(info["backends"]) in out
    assert f"{info['cpu']['openmp_threads']} threads" in out
    assert info["cpu"]["simd"] in out and info["cpu"]["flags"] in out
    assert "cuda" in out
    assert ("device usable:   yes" if info["cuda"]["usable"] else "device usable:   no") in out
    assert info["cuda"]["status"] in out


def test_show_config_reports_thread_limit(capsys):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        assert genfast.config()["cpu"]["openmp_threads"] == 1
        genfast.show_config()
    assert "1 threads" in capsys.readouterr().out


def test_core_build_info():
    info = dict(_core.build_info())
    assert {"version", "compiler", "flags", "simd", "vector_bytes", "openmp"} <= set(info)
    assert info["vector_bytes"] in (16, 32, 64)
    assert int(info["openmp"]) >= 201107  # OpenMP 3.1 or later


def _run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_does_not_import_torch():
    code = (
        "import sys, genfast\n"
        "from genfast import ops, reference\n"
        "genfast.config()\n"
        "import numpy as np\n"
        "ops.kmeans_assign(np.zeros((3, 2)), np.ones((2, 2)))\n"
        "genfast.KMeans(2, random_state=0).fit(np.arange(8.0).reshape(4, 2))\n"
        "print('torch' in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5])\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("False"), f"torch was imported: {proc.stdout}"


def test_import_without_dask():
    """dask is an optional extra: genfast imports and fits without it (an import of dask
    fails in this process) and genfast.dask says which extra to install."""
    code = (
        "import sys\n"
        "sys.modules['dask'] = None  # any `import dask` now raises ImportError\n"
        "import numpy as np, genfast\n"
        "genfast.KMeans(2, random_state=0).fit(np.arange(8.0).reshape(4, 2))\n"
        "try:\n"
        "    genfast.dask\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'genfast[dask]'" in proc.stdout, proc.stdout


def test_show_config_in_fresh_process():
    proc = _run("import genfast; genfast.show_config()")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"genfast {genfast.__version__}")
    assert "backends built:" in proc.stdout and "openmp:" in proc.stdout and "device usable:" in proc.stdout


def test_command_line_config():
    """`python -m genfast config` (the `genfast` console script) prints show_config()."""
    proc = subprocess.run([sys.executable, "-m", "genfast", "config"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"genfast {genfast.__version__}")
    assert "backends built:" in proc.stdout and "device usable:" in proc.stdout


def test_public_api():
    assert set(genfast.__all__) >= {"KMeans", "ops", "reference", "show_config", "config", "__version__"}
    for name in ("kmeans_assign", "kmeans_update", "kmeans_lloyd_step"):
        assert callable(getattr(genfast.ops, name))
    for name in ("kmeans_assign", "kmeans_update", "kmeans_lloyd_step", "openmp_max_threads", "build_info"):
        assert callable(getattr(_core, name))
