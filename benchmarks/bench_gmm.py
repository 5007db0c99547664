#!/usr/bin/env python
"""Gaussian-mixture EM benchmark: genfast against scikit-learn and torch, in one run.

The code is genfast.bench.gmm (installed with genfast); this script runs it:
python benchmarks/bench_gmm.py --help, or python -m genfast bench --only gmm.
"""

import sys

from genfast.bench.gmm import main

if __name__ == "__main__":
    sys.exit(main())
