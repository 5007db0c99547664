"""The property-based tests (tests/properties/prop_*.py, hypothesis), each file run in a
subprocess, so that an interpreter crash (a segfault or abort in a kernel) is a test failure
that shows the example being run, not the end of the pytest session.

Before each example the property tests write it to a trace file (propcheck.record_example);
when the subprocess dies from a signal this test reports the trace, the last thing it wrote.
An ordinary failure shows hypothesis' own report (the shrunk falsifying example and how to
reproduce it). The examples each test ran are counted in the subprocess and printed at the
end of this session ("hypothesis examples" in the terminal summary).

Settings profile: GENFAST_HYPOTHESIS_PROFILE=ci (default: derandomized, bounded) or
thorough (random, 20x the examples), passed on to the subprocess. Run one file directly:
    python -m pytest --confcutdir=tests/properties -o python_files='prop_*.py' tests/properties/prop_ops.py
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PROPERTY_EXAMPLES

PROPERTIES = Path(__file__).parent / "properties"
FILES = sorted(PROPERTIES.glob("prop_*.py"))
#: wall-clock limit of one file's run (a hang fails the test instead of stalling CI)
TIMEOUT_S = {"ci": 600, "thorough": 7200}.get(os.environ.get("GENFAST_HYPOTHESIS_PROFILE", "ci"), 600)


def _tail(text: str, n: int = 12000) -> str:
    return text if len(text) <= n else "...\n" + text[-n:]


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_property_file(path, tmp_path, request):
    pytest.importorskip("hypothesis")
    pytest.importorskip("torch")
    trace, counts = tmp_path / "trace.txt", tmp_path / "counts.json"
    env = {**os.environ, "GENFAST_PROPS_TRACE": str(trace), "GENFAST_PROPS_COUNTS": str(counts)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--confcutdir={PROPERTIES}",
           "-o", "python_files=prop_*.py", str(path)]
    try:
        proc = subprocess.run(cmd, cwd=PROPERTIES.parent.parent, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        example = trace.read_text() if trace.exists() else "(none recorded)"
        pytest.fail(f"{path.name} ran past {TIMEOUT_S} s (a hang?); the example running:\n{example}\n"
                    f"output:\n{_tail((exc.stdout or b'').decode(errors='replace'))}", pytrace=False)
    if counts.exists():
        request.config.stash.setdefault(PROPERTY_EXAMPLES, {}).update(
            {f"{path.stem}::{name}": n for name, n in json.loads(counts.read_text()).items()})
    output = proc.stdout + proc.stderr
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        example = trace.read_text() if trace.exists() else "(none recorded)"
        pytest.fail(f"the interpreter crashed ({name}) in {path.name} while running this example:\n{example}\n\n"
                    f"output:\n{_tail(output)}", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(f"{path.name} failed (exit status {proc.returncode}):\n{_tail(output)}", pytrace=False)
    assert counts.exists(), f"{path.name} ran no property test:\n{_tail(output)}"
