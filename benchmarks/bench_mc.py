#!/usr/bin/env python
"""Monte Carlo likelihood benchmark (float32, CPU or CUDA), log-mean-exp and log importance weights against torch and scipy.

The code is genfast.bench.mc (installed with genfast); this script runs it:
python benchmarks/bench_mc.py --help, or python -m genfast bench --only mc.
"""

import sys

from genfast.bench.mc import main

if __name__ == "__main__":
    sys.exit(main())
