#!/usr/bin/env python
"""k-means on Dask: genfast.dask.KMeans against dask-ml's KMeans, on one LocalCluster.

The code is genfast.bench.dask (installed with genfast); this script runs it:
python benchmarks/bench_dask.py --help, or python -m genfast bench --only dask.
"""

import sys

from genfast.bench.dask import main

if __name__ == "__main__":
    sys.exit(main())
