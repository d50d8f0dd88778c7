"""The console commands: ``tas <command> ...`` and the same as ``tas-<command> ...``.

pyproject.toml declares them (``[project.scripts]``); each is a thin layer over one library call,
and the checkout's ``train.py`` and ``search.py`` call the same ``main`` functions. Errors in what
the user passes print one ``error:`` line and exit with code 2 (:func:`tas.cli.run_main`).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Sequence

from ..cli import run_main
from .. import __version__

__all__ = ["COMMANDS", "main", "tas_train", "tas_search", "tas_export", "tas_latency", "tas_demo"]

#: sub-command -> (module with ``main(argv, prog)``, one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("tas.commands.train", "train a network (the teacher), or distil a searched slim network (--arch)"),
    "search": ("tas.commands.search", "search a pruned architecture of a trained network; writes arch.json"),
    "export": ("tas.commands.export", "export a run's network to ONNX, checked against ONNX Runtime, with latencies"),
    "latency": ("tas.commands.latency", "build a per-layer latency table ahead of a --latency-ratio search"),
    "demo": ("tas.pipeline", "the whole pipeline on the bundled digits set: teacher, search, distil, ONNX"),
}


def _command(name: str) -> Callable[..., int]:
    return importlib.import_module(COMMANDS[name][0]).main


def _dispatch(argv: Sequence[str] | None = None) -> int:
    listing = "\n".join(f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="tas", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Prune convolutional networks by differentiable architecture search (TAS).",
        epilog=f"commands:\n{listing}\n\n`tas <command> --help` lists a command's flags.")
    parser.add_argument("--version", action="version", version=f"tas {__version__}")
    parser.add_argument("command", choices=COMMANDS, metavar="command", help="one of: " + ", ".join(COMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the command's flags")
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    return _command(args.command)(args.args, prog=f"tas {args.command}")


def main(argv: Sequence[str] | None = None) -> int:
    """``tas <command> ...``."""
    return run_main(_dispatch, argv)


def _entry(name: str) -> Callable[[], int]:
    def entry() -> int:
        return run_main(lambda argv: _command(name)(argv, prog=None))

    entry.__name__ = entry.__qualname__ = f"tas_{name}"
    entry.__doc__ = f"``tas-{name} ...``: {COMMANDS[name][1]}."
    return entry


# Named tas_<command>, not <command>: importing the submodule tas.commands.<command> binds that name on
# this package, which would replace a console entry called the same.
tas_train, tas_search, tas_export, tas_latency, tas_demo = (_entry(name) for name in COMMANDS)
