#!/usr/bin/env python
"""``python train.py ...`` in a checkout: the same command as ``tas train`` (:mod:`tas.commands.train`)."""
import os
import sys

# Two OpenMP threads spin-waiting slow every step ~100x when another process shares the cores;
# the variable is read when torch loads, so it is set before tas is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tas.cli import run_main  # noqa: E402
from tas.commands.train import build_parser, main  # noqa: E402,F401  (the tests import both from here)

if __name__ == "__main__":
    sys.exit(run_main(main))
