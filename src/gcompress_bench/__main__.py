"""python -m gcompress_bench: the gcompress-bench console script, for environments without it on PATH."""
import sys

from gcompress_bench.cli import main

sys.exit(main())
