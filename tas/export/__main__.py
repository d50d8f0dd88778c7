"""``python -m tas.export``: runs :func:`tas.commands.export.main`."""
import sys

from ..cli import run_main
from ..commands.export import main

sys.exit(run_main(main))
