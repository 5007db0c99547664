#!/usr/bin/env python
"""VAE ELBO benchmark: genfast.torch.elbo against the same loss in torch eager and torch.compile.

The code is genfast.bench.elbo (installed with genfast); this script runs it:
python benchmarks/bench_elbo.py --help, or python -m genfast bench --only elbo.
"""

import sys

from genfast.bench.elbo import main

if __name__ == "__main__":
    sys.exit(main())
