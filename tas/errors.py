"""Errors that reach the user as one line and a documented exit code.

Every failure caused by what the user gave us (a name, a path, a file, a number) raises
:class:`TasError` or a subclass. The CLIs catch it, print ``error: <message>`` and exit with
:data:`EXIT_USAGE`, or the subclass's own code (:class:`DivergedError`: 3, :class:`RunIOError`:
74); anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import errno

EXIT_OK = 0
EXIT_FAILURE = 1  # an unexpected internal error (a bug): traceback printed
EXIT_USAGE = 2  # bad input: unknown name, missing/corrupt file, infeasible target
EXIT_DIVERGED = 3  # a loss or parameter became NaN/inf; the last good checkpoint is kept
EXIT_IO = 74  # the system refused a read or write (disk full, read-only, permission): sysexits' EX_IOERR

#: errnos that are the machine's fault, not ours nor the user's input: reported as :data:`EXIT_IO`
IO_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                       errno.EFBIG})


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


class RunIOError(TasError):
    """The file system refused a write or read (disk full, read-only, no permission): exit code 74.

    Raised with the path and the cause; every file of the run is written atomically, so what was
    complete before the fault (the last checkpoint, an earlier finished run) is still there.
    """


def io_error_message(path: object, e: BaseException, verb: str = "write") -> str:
    """``cannot <verb> <path>: <cause>`` for an ``OSError`` (or a library error wrapping one)."""
    cause = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    return f"cannot {verb} {path}: {cause}"


#: errnos of a refused write (as opposed to a refused read or access)
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def run_io_error(e: BaseException, path: object = None, verb: str | None = None) -> RunIOError | None:
    """``e`` as a :class:`RunIOError` when it is an I/O fault (an ``OSError`` of :data:`IO_ERRNOS`),
    else None (a bug, or an error with its own meaning: re-raise it). The message names ``path``
    (default: the error's own file name) and ``verb`` (default: ``write`` for a full or read-only
    file system, else ``access``)."""
    if not isinstance(e, OSError) or e.errno not in IO_ERRNOS:
        return None
    if verb is None:
        verb = "write" if e.errno in _WRITE_ERRNOS else "access"
    return RunIOError(io_error_message(path if path is not None else (e.filename or "a file"), e, verb))
