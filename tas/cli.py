"""What train.py and search.py share: YAML configs under flags, one-line errors, summary tables.

The scripts stay thin: they declare flags, call :func:`parse_args`, and hand the namespace to the
library inside :func:`run_main`, which turns a :class:`~tas.errors.TasError` into ``error: ...`` on
stderr and exit code 2 (3 for a diverged run, 74 for an I/O fault such as a full disk).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from .errors import EXIT_DIVERGED, EXIT_IO, EXIT_USAGE, DivergedError, RunIOError, TasError, run_io_error

__all__ = ["parse_args", "run_main", "format_table", "config_from_args", "RunSettings", "HelpFormatter", "DATASET_HELP",
           "epoch_count", "check_epochs"]

#: ``--dataset``'s help, shared by the commands
DATASET_HELP = ("digits, fashion-mnist, mnist, cifar10, cifar100, imagefolder, or module:function naming your "
                "function that returns (train_dataset, test_dataset, tas.data.DatasetInfo)")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` with every flag's default and the examples in the epilog kept as written."""


def add_device_flags(group: Any) -> None:
    """``--amp`` and ``--channels-last`` (:mod:`tas.amp`), shared by train and search."""
    group.add_argument("--amp", default=None, choices=("bf16", "fp16"),
                       help="mixed precision: forward under autocast in bf16, or fp16 with loss scaling")
    group.add_argument("--channels-last", action="store_true", help="models and batches in NHWC (fast on CUDA)")


def check_epochs(value: Any, flag: str = "epochs") -> int | float:
    """``value`` as a run length in epochs: a positive number, whole ones as ``int`` (YAML's ``2.0``
    and ``2`` alike), fractions as ``float`` (``0.5``: half a pass over the training split, see
    :func:`tas.train.engine.epoch_lengths`). Raises :class:`TasError` naming ``--flag`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise TasError(f"--{flag.replace('_', '-')} must be a positive number of epochs (fractions allowed), "
                       f"got {value!r}")
    return int(value) if float(value).is_integer() else float(value)


def epoch_count(text: str) -> int | float:
    """argparse ``type`` of the ``--epochs`` flags: ``"3"`` → 3, ``"0.5"`` → 0.5 (:func:`check_epochs`)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    return check_epochs(value)


def _load_config(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise TasError(f"--config file not found: {p}")
    try:
        cfg = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise TasError(f"--config {p} is not valid YAML: {e}") from None
    if not isinstance(cfg, dict):
        raise TasError(f"--config {p} must be a mapping of flag names to values")
    return cfg


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` where ``--config FILE.yaml`` supplies defaults and explicit flags override it.

    Config keys are flag names with dashes or underscores (``batch-size`` or ``batch_size``); an
    unknown key is an error naming it, so a typo never silently does nothing.
    """
    if not any(a.dest == "config" for a in parser._actions):
        parser.add_argument("--config", default=None, help="YAML file of flag values; flags override it")
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        cfg = _load_config(pre.config)
        dests = {a.dest for a in parser._actions}
        unknown = sorted(k for k in cfg if k.replace("-", "_") not in dests)
        if unknown:
            raise TasError(f"--config {pre.config}: unknown keys {unknown}")
        parser.set_defaults(**{k.replace("-", "_"): v for k, v in cfg.items()})
    return parser.parse_args(argv)


@dataclasses.dataclass
class RunSettings:
    """The settings every run of ``tas train`` and ``tas search`` has: its directory, seed, device,
    data loading, logging and checkpoints. The commands' configs extend it (each with its own
    ``output`` default) and call :meth:`validate_run` from their ``validate``."""

    seed: int = 0
    output: str = "runs/run"
    resume: bool = False
    overwrite: bool = False
    workers: int = 0
    device: str = "auto"
    limit: int | None = None
    progress: bool = True
    log_every: int = 10
    checkpoint_every: int = 50
    nan_policy: str = "stop"

    def validate_run(self) -> None:
        """Raise :class:`TasError` naming the first of these flags with an impossible value."""
        if not isinstance(self.workers, int) or self.workers < 0:
            raise TasError(f"--workers must be a non-negative integer, got {self.workers!r}")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise TasError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.resume and self.overwrite:
            raise TasError("--resume continues the run in --output and --overwrite starts it over: give one")
        if not self.output:
            raise TasError("--output must name a directory")
        if self.nan_policy not in ("stop", "skip"):
            raise TasError(f"--nan-policy must be stop or skip, got {self.nan_policy!r}")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise TasError(f"--checkpoint-every must be a non-negative integer (0: epochs only), got "
                           f"{self.checkpoint_every!r}")


def config_from_args(cls, args: Any):
    """An instance of the settings dataclass ``cls`` from an argparse ``Namespace`` or a mapping.

    Unknown keys are ignored (a namespace carries every script flag), missing ones take the
    defaults, ``no_progress`` maps to ``progress``; the result is validated.
    """
    if isinstance(args, cls):
        cfg = dataclasses.replace(args)
    else:
        values = dict(args) if isinstance(args, Mapping) else dict(vars(args))
        if "no_progress" in values and "progress" not in values:
            values["progress"] = not values["no_progress"]
        names = {f.name for f in dataclasses.fields(cls)}
        cfg = cls(**{k: v for k, v in values.items() if k in names})
    cfg.validate()
    return cfg


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a script's ``main``: user errors become one line on stderr and exit code 2, a diverged
    run (NaN/inf) exit code 3, and an I/O fault (disk full, read-only or forbidden path, wherever
    it is raised) exit code 74."""
    try:
        return int(main(argv) or 0)
    except DivergedError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except RunIOError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_IO
    except TasError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        err = run_io_error(e)
        if err is None:
            raise  # anything else (a bad fd, a missing file we should have checked) is a bug
        print(f"error: {err}", file=sys.stderr)
        return EXIT_IO
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def format_table(rows: Sequence[Sequence[object]], header: Sequence[str] | None = None) -> str:
    """A plain aligned text table (also valid Markdown when ``header`` is given)."""
    cells = [[str(c) for c in r] for r in ([header] if header else []) + list(rows)]
    if not cells:
        return ""
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    if header:
        lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
