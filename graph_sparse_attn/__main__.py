"""``python -m graph_sparse_attn`` is the ``gsa`` command."""
import sys

from .train.cli import main

sys.exit(main())
