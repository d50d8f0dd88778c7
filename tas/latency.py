"""``python -m tas.latency``: the entry point of ``tas latency``.

The latency tables themselves live in :mod:`tas.deploy.latency`; this module only keeps the
documented ``python -m`` spelling working.
"""
import sys

from .cli import run_main
from .commands.latency import main

if __name__ == "__main__":
    sys.exit(run_main(main))
