"""``python -m tas <command> ...``: the ``tas`` console command (:mod:`tas.commands`)."""
import sys

from .commands import main

sys.exit(main())
