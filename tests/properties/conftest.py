"""Hypothesis settings for genfast's property tests, and the count of examples they ran.

Profiles (environment variable GENFAST_HYPOTHESIS_PROFILE, default "ci"):
- "ci": derandomized (the same examples on every run, so a CI failure reproduces as is),
  bounded so that the whole property suite adds about a minute on 2 cores;
- "thorough": random (hypothesis prints the seed and a reproduction blob on failure),
  many more examples per test; for a local run before a release.
Tests set their example counts with propcheck.examples(n) (n: the "ci" count).

The files here are named prop_*.py so that a plain `pytest` does not collect them:
tests/test_properties.py runs them in a subprocess, where an interpreter crash becomes a
test failure with the crashing example. To run them directly:
    python -m pytest --confcutdir=tests/properties -o python_files='prop_*.py' tests/properties
"""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, settings

import propcheck

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                     HealthCheck.filter_too_much], print_blob=True)
settings.register_profile("ci", derandomize=True, database=None, **_COMMON)
settings.register_profile("thorough", max_examples=1000, **_COMMON)
PROFILE = propcheck.PROFILE
settings.load_profile(PROFILE)


def pytest_report_header(config):
    return f"genfast property tests: hypothesis profile {PROFILE!r}"


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("GENFAST_PROPS_COUNTS")
    if path and propcheck.EXAMPLE_COUNTS:
        with open(path, "w") as f:
            json.dump(dict(propcheck.EXAMPLE_COUNTS), f)


def pytest_terminal_summary(terminalreporter):
    counts = propcheck.EXAMPLE_COUNTS
    if not counts:
        return
    terminalreporter.section("hypothesis examples")
    for name, n in sorted(counts.items()):
        terminalreporter.write_line(f"{n:7d}  {name}")
    terminalreporter.write_line(f"{sum(counts.values()):7d}  inputs tried in total (profile {PROFILE!r})")
