"""``python -m tas.analyze RUN``: how far each channel group of a run's network can be pruned.

Reports, per channel group, the pruning-limit estimate of :mod:`tas.prune.limits` (Zhang et al. 2024,
carried to channels): the group's width, its weights, their mean curvature ``Tr|H|/D``, and the
smallest width the loss-sublevel-set argument allows. ``RUN`` is a run directory:

* a teacher or a distilled slim network (``train.py``): its own network is analysed;
* a search run (``search.py``, any ``--method``): its teacher (``config.json``'s ``search.teacher``,
  or ``--teacher``) is analysed, and the width the search chose is printed beside the estimate.

Calibration batches are read from the run's training data (``config.json``'s dataset and image
size) without augmentation.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from .cli import HelpFormatter, format_table, parse_args
from .data import create_loaders
from .errors import TasError
from .io.checkpoint import atomic_write_json
from .io.rundir import read_config
from .prune.arch import Arch
from .prune.families import describe_model
from .prune.limits import GroupLimit, estimate_limits
from .prune.load import load_run

__all__ = ["analyze_run", "main"]


def _teacher_dir(run: Path, config: dict[str, Any], teacher: str | None) -> Path:
    """The network a search run pruned: ``--teacher``, else the path its config records (as given
    on the command line, so tried from here and from the run's parent)."""
    recorded = teacher or (config.get("search") or {}).get("teacher")
    if not recorded:
        raise TasError(f"{run} is a search run that records no teacher; pass --teacher")
    for base in (Path.cwd(), run.parent):
        if (base / recorded).is_dir():
            return base / recorded
    raise TasError(f"the teacher of {run} ({recorded}) is not found from here or from {run.parent}; pass --teacher")


def analyze_run(run_dir: str | Path, *, teacher: str | None = None, batches: int = 2, batch_size: int = 64,
                steps: int = 12, probes: int = 1, data_dir: str | None = None, groups: Sequence[str] | None = None,
                seed: int = 0) -> dict[str, Any]:
    """The estimate for the network of ``run_dir``: ``{"analysed", "dataset", "groups": {name: {...}}}``,
    each group with ``channels``, ``params``, ``curvature``, ``epsilon``, ``limit_width``,
    ``limit_ratio`` and, for a search run, the ``searched_width``."""
    run = Path(run_dir)
    config = read_config(run)
    arch = Arch.from_json(run / "arch.json") if config.get("stage") == "search" and (run / "arch.json").is_file() \
        else None
    source = _teacher_dir(run, config, teacher) if arch is not None else run
    model, source_config = load_run(source)
    dataset = source_config.get("dataset") or config.get("dataset")
    if not dataset:
        raise TasError(f"{source} records no dataset to calibrate on")
    img_size = (source_config.get("data") or {}).get("img_size") or source_config["input_size"][1]
    loaders = create_loaders(dataset, data_dir=data_dir, batch_size=batch_size, img_size=img_size, augment=False)
    calib = []
    for x, y in loaders["train"]:
        if len(calib) == batches:
            break
        calib.append((x, y))
    if groups:
        unknown = sorted(set(groups) - set(describe_model(model).groups))
        if unknown:
            raise TasError(f"--groups: no such channel group {unknown}")
    limits = estimate_limits(model, calib, steps=steps, probes=probes, seed=seed, groups=groups)
    return {"analysed": str(source), "dataset": dataset, "calibration_images": sum(len(y) for _, y in calib),
            "groups": {n: _row(l, arch) for n, l in limits.items()}}


def _row(limit: GroupLimit, arch: Arch | None) -> dict[str, Any]:
    row = {"channels": limit.channels, "params": limit.params, "curvature": limit.curvature,
           "epsilon": limit.epsilon, "limit_width": limit.width, "limit_ratio": limit.ratio,
           "curve": [list(c) for c in limit.curve]}
    if arch is not None:
        row["searched_width"] = arch.groups[limit.group]["width"]
    return row


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("run_dir", metavar="RUN", help="a search or training run directory")
    p.add_argument("--teacher", default=None, help="a search run's teacher, when its recorded path is not found")
    p.add_argument("--data-dir", default=None, help="dataset location (as train.py)")
    p.add_argument("--batches", type=int, default=2, help="calibration batches (at least 2: ε is their loss spread)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=12, help="Lanczos steps per probe")
    p.add_argument("--probes", type=int, default=1, help="Rademacher probes per group")
    p.add_argument("--groups", nargs="+", default=None, help="only these channel groups")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    return p


def main(argv: Sequence[str] | None = None, prog: str | None = "python -m tas.analyze") -> int:
    args = parse_args(build_parser(prog), argv)
    for flag in ("batches", "batch_size", "steps", "probes"):
        if getattr(args, flag) < (2 if flag == "batches" else 1):
            raise TasError(f"--{flag.replace('_', '-')} must be at least {2 if flag == 'batches' else 1}")
    result = analyze_run(args.run_dir, teacher=args.teacher, batches=args.batches, batch_size=args.batch_size,
                         steps=args.steps, probes=args.probes, data_dir=args.data_dir, groups=args.groups)
    searched = any("searched_width" in g for g in result["groups"].values())
    header = ["group", "channels", "weights", "mean |λ|", "limit width", "limit ratio"] + (["searched"] if searched else [])
    rows = [[n, g["channels"], g["params"], f"{g['curvature']:.3g}", g["limit_width"], f"{g['limit_ratio']:.2f}"]
            + ([g["searched_width"]] if searched else []) for n, g in result["groups"].items()]
    eps = next(iter(result["groups"].values()))["epsilon"] if result["groups"] else float("nan")
    print(f"pruning limits of {result['analysed']} ({result['dataset']}, {result['calibration_images']} "
          f"calibration images, ε = {eps:.3g}); Zhang et al. 2024 carried to channel groups")
    print(format_table(rows, header))
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    from .cli import run_main

    sys.exit(run_main(main))
