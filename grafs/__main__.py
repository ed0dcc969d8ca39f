"""``python -m grafs`` (e.g. ``torchrun --nproc-per-node 2 -m grafs search``): the command line."""
import sys

from grafs.cli import main

if __name__ == "__main__":  # not when a spawned worker process re-imports the main module
    sys.exit(main())
