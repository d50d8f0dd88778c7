"""Errors that reach the user as one line and exit code 2.

Every failure caused by what the user gave us (a name, a path, a file, a number) raises
:class:`TasError` or a subclass. The CLIs catch it, print ``error: <message>`` and exit with
:data:`EXIT_USAGE`; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # an unexpected internal error (a bug): traceback printed
EXIT_USAGE = 2  # bad input: unknown name, missing/corrupt file, infeasible target
EXIT_DIVERGED = 3  # a loss or parameter became NaN/inf; the last good checkpoint is kept


class TasError(Exception):
    """Bad input from the user; reported as one line, exit code 2."""


class DataError(TasError):
    """A dataset cannot be found, read or is unknown."""


class ModelError(TasError):
    """An unknown or unsupported model, or weights that do not fit it."""


class ArchError(TasError):
    """An architecture spec that is malformed, from another model, or infeasible."""


class CheckpointError(TasError):
    """A missing, truncated or otherwise unreadable checkpoint or run directory."""


class DivergedError(TasError):
    """A loss or parameter became NaN or infinite (exit code 3); the last good checkpoint is kept."""
