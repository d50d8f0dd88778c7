"""The run directory: what every stage writes and how any later stage reads a model back.

A finished run holds (see :mod:`tas.io.checkpoint` for the full layout)::

    config.json        {"version": 1, "model": <timm name>, "model_kwargs": {...},
                        "input_size": [C, H, W], ...stage-specific keys}
    model.safetensors  the weights, loadable strictly into the model config.json describes
    metrics.json       final metrics (optional)

:func:`save_run` writes those files (each atomically) and :func:`load_run` rebuilds the model from
``config.json`` alone -- no pickle, no code on disk (:func:`tas.prune.load.load_run` rebuilds it:
building a model needs the models and the materialiser, which sit above this layer). A config with
an ``"arch"`` key describes a pruned (slim) network.

One writer at a time: a run holds :func:`run_lock` on its directory while it writes there (the
file ``.tas-lock`` names its PID, host and command). A second run into the same directory is
refused (exit 2) naming that PID and host. The lock is an ``flock`` on that file, which the kernel
releases when its holder dies, so a run killed with ``kill -9`` never blocks the next one: the
next run finds the lock free but still naming the dead run, says so, and takes it over (this is
what lets ``--resume`` continue a crashed run).
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch.nn as nn

from .checkpoint import atomic_write_json, read_json, save_weights
from ..errors import CheckpointError, TasError, run_io_error

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "METRICS_NAME", "RUN_VERSION", "save_run",
           "read_config", "is_finished_run", "run_lock", "check_output_dir", "LOCK_NAME"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
METRICS_NAME = "metrics.json"
RUN_VERSION = 1
LOCK_NAME = ".tas-lock"


def is_finished_run(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds a finished run's weights (what ``--overwrite`` protects)."""
    return (Path(run_dir) / WEIGHTS_NAME).is_file()


def save_run(
    run_dir: str | os.PathLike,
    model: nn.Module,
    *,
    model_name: str,
    model_kwargs: Mapping[str, Any],
    input_size: Sequence[int],
    metrics: Mapping[str, Any] | None = None,
    extra_config: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``model.safetensors``, ``config.json`` and (if given) ``metrics.json`` into ``run_dir``.

    Each file is written atomically; the weights go first so ``config.json`` never describes
    weights that are not there yet. Returns the paths written, by kind.

    Args:
        model_name: timm name the model is rebuilt from (ignored by :func:`load_run` when
            ``extra_config`` carries an ``"arch"``).
        model_kwargs: constructor arguments, ``num_classes`` and ``in_chans`` included.
        input_size: ``(C, H, W)`` of one input.
        extra_config: more keys for ``config.json`` (dataset, mean/std, training settings, arch).
    """
    run_dir = Path(run_dir)
    kwargs = dict(model_kwargs)
    for key in ("num_classes", "in_chans"):
        if key not in kwargs:
            raise ValueError(f"save_run: model_kwargs must include {key!r}")
    config: dict[str, Any] = {
        "version": RUN_VERSION,
        "model": model_name,
        "model_kwargs": kwargs,
        "input_size": [int(x) for x in input_size],
    }
    for key, value in (extra_config or {}).items():
        if key in config:
            raise ValueError(f"save_run: extra_config may not override {key!r}")
        config[key] = value
    paths = {"weights": run_dir / WEIGHTS_NAME, "config": run_dir / CONFIG_NAME}
    save_weights(paths["weights"], model.state_dict(), metadata={"format": "pt", "model": str(model_name)})
    atomic_write_json(paths["config"], config)
    if metrics is not None:
        paths["metrics"] = run_dir / METRICS_NAME
        atomic_write_json(paths["metrics"], dict(metrics))
    return paths


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a run, checked; anything missing or malformed raises :class:`CheckpointError`."""
    path = Path(run_dir) / CONFIG_NAME
    if Path(run_dir).is_file():
        raise CheckpointError(f"expected a run directory, got a file: {run_dir}")
    config = read_json(path, "run config")
    version = config.get("version")
    if version != RUN_VERSION:
        raise CheckpointError(f"run config {path} has version {version!r}; this tas reads version {RUN_VERSION}")
    problems = []
    if "arch" not in config and not (isinstance(config.get("model"), str) and config["model"]):
        problems.append("'model' must be a timm model name")
    kwargs = config.get("model_kwargs")
    if not isinstance(kwargs, dict) or not all(isinstance(kwargs.get(k), int) for k in ("num_classes", "in_chans")):
        problems.append("'model_kwargs' must be an object with integer num_classes and in_chans")
    size = config.get("input_size")
    if not (isinstance(size, list) and len(size) == 3 and all(isinstance(x, int) and x > 0 for x in size)):
        problems.append("'input_size' must be [C, H, W]")
    if problems:
        raise CheckpointError(f"run config {path} is malformed: {'; '.join(problems)}")
    return config


# ---------------------------------------------------------------------------------------------
# one writer per run directory
# ---------------------------------------------------------------------------------------------
def _read_owner(fd: int) -> dict[str, Any]:
    """The holder a lock file names (``{}`` when it is empty or unreadable)."""
    try:
        owner = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, UnicodeDecodeError, OSError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _describe(owner: Mapping[str, Any]) -> str:
    if not owner:
        return "a process that has not written its PID yet (just starting)"
    text = f"PID {owner.get('pid', '?')} on host {owner.get('host', '?')}"
    if owner.get("started"):
        text += f", started {owner['started']}"
    return text + (f" ({owner['command']})" if owner.get("command") else "")


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True  # someone else's live process (or an unreadable lock): assume held
    return True


#: seconds a lock naming a dead PID of this host is retried: the run's forked children (DataLoader
#: workers) share its flock and need a moment to notice that it died
CHILD_WAIT_S = 10.0


def _lock_fd(path: Path) -> int:
    """An fd of ``path`` holding its exclusive ``flock``; refuses (exit 2) when another run holds it."""
    deadline = None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise (run_io_error(e, path.parent, "write to") or e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            owner = _read_owner(fd)
            here = owner.get("host") == socket.gethostname()
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                # Without flock (some network file systems) only a holder on this host can be checked.
                if owner and (not here or _pid_alive(owner.get("pid"))):
                    os.close(fd)
                    hint = "" if here else f"; if that run is gone, delete {path}"
                    raise TasError(f"{path.parent} is being written by another run: {_describe(owner)}; wait for "
                                   f"it to end or choose another --output (lock file: {path}){hint}") from None
            else:
                os.close(fd)
                if not (here and not _pid_alive(owner.get("pid"))):
                    raise TasError(f"{path.parent} is being written by another run: {_describe(owner)}; wait for "
                                   f"it to end or choose another --output (lock file: {path})") from None
                # The holder is dead but the flock lives on in processes it forked: wait for them.
                deadline = deadline if deadline is not None else time.monotonic() + CHILD_WAIT_S
                if time.monotonic() >= deadline:
                    raise TasError(f"{path.parent} is locked: PID {owner.get('pid')} has ended but its child "
                                   f"processes still hold the lock; retry in a few seconds (lock file: {path})") from None
                time.sleep(0.1)
                continue
        # A holder deletes the file on release: the file locked must still be the one at ``path``.
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def check_output_dir(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`Path`; :class:`~tas.errors.TasError` (exit 2) when it is an existing
    file, which an ``--output`` run directory cannot be."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TasError(f"--output {path} is a file, not a directory")
    return path


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, *, enabled: bool = True) -> Iterator[Path]:
    """Hold ``run_dir``'s writer lock while the body runs (creating the directory); yields its path.

    A second holder, in this process or another, gets :class:`~tas.errors.TasError` (exit 2)
    naming the PID and host that hold it. A lock left by a run that died without releasing it
    (killed, crashed, machine rebooted) is free but still names that run: it is taken over with a
    note on stderr, and the dead run's files are left as they are (``--resume`` continues it). A
    directory that cannot be created or written raises :class:`~tas.errors.RunIOError` (exit 74).
    ``enabled=False`` (ranks other than 0 under torchrun, which do not write) does nothing.
    """
    run_dir = Path(run_dir)
    if not enabled:
        yield run_dir / LOCK_NAME
        return
    check_output_dir(run_dir)
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except (NotADirectoryError, FileExistsError):  # a parent is a file: the path is wrong
        blocker = next((p for p in run_dir.parents if p.exists() and not p.is_dir()), run_dir)
        raise TasError(f"--output {run_dir} cannot be created: {blocker} is a file, not a directory") from None
    except OSError as e:
        raise (run_io_error(e, run_dir, "create") or e) from None
    path = run_dir / LOCK_NAME
    fd = _lock_fd(path)
    try:
        previous = _read_owner(fd)
        if previous.get("pid") not in (None, os.getpid()):
            print(f"note: {run_dir} was locked by {_describe(previous)}, which ended without releasing it "
                  "(killed or crashed); taking the lock over, its files are kept", file=sys.stderr)
        owner = {"pid": os.getpid(), "host": socket.gethostname(),
                 "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                 "command": " ".join(sys.argv)[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
    except OSError as e:
        path.unlink(missing_ok=True)
        os.close(fd)
        raise (run_io_error(e, path, "write") or e) from None
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)  # still holding the flock: nobody can have taken it
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only succeeds when the run wrote nothing (refused before starting)
