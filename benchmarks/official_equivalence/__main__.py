"""``python -m benchmarks.official_equivalence``: see ``run.py``."""
import sys

from .run import main

sys.exit(main())
