#!/usr/bin/env python
"""k-means (Lloyd) benchmark: genfast against scikit-learn, faiss and torch, in one run.

The code is genfast.bench.kmeans (installed with genfast); this script runs it:
python benchmarks/bench_kmeans.py --help, or python -m genfast bench --only kmeans.
"""

import sys

from genfast.bench.kmeans import main

if __name__ == "__main__":
    sys.exit(main())
