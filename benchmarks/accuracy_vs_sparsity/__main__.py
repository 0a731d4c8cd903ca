"""`python -m benchmarks.accuracy_vs_sparsity`: see `benchmarks.accuracy_vs_sparsity.cli`."""

import sys

from benchmarks.accuracy_vs_sparsity.cli import main

sys.exit(main())
