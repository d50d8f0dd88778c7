"""Replay the landing steps of finished allocation searches under other landing rules (issue 14).

A TAS search of ``benchmarks/allocation.py`` saves its state at the end of its last epoch, before the
landing steps (``--landing-steps``: architecture steps past the search's end while the argmax lies
outside the budget band), which are not checkpointed. ``--resume`` on a copy of the search directory
therefore repeats only the landing steps, the decode and the final evaluation: about a minute per
cell on one core, where the search took eight. This script does that for the cells that missed the
band, once per landing rule, and reports where each argmax ends:

* ``default``: the library's landing steps, unchanged (must reproduce the cell: a check of the replay);
* ``aim-shift``: each landing step aims the controller at the band's middle minus the argmax's miss
  (argmax ratio − aim), so the expected cost, whose gradient does not vanish on committed
  distributions as the sharpened cost's does, is pulled past the aim by as much as the argmax misses;
* ``aim-integral``: the same shift accumulated over the landing steps (an integral controller on the
  argmax's miss);
* ``inner-only``: the landing steps move only the widths of groups inside one block (one conv's width
  in one block: the finest cost moves of the space), the depths and residual-stream widths stay as the
  search left them, so no single flip can jump across the band;
* ``inner-aim-shift``: both.

The rules are applied by wrapping :meth:`tas.nas.arch_step.ArchStepper.land` in this process only.

    python benchmarks/landing_replay.py --output runs/allocation/cpu20k_lr02 --ratio 0.12 --seeds 0 1 4 5

Results cached in ``<output>/landing_replay/results.json`` (a replay runs once; ``--fresh`` reruns).
Not a test.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from tas.io.checkpoint import atomic_write_json  # noqa: E402
from tas.nas import run as searching  # noqa: E402
from tas.nas.arch_step import ArchStepper  # noqa: E402
from tas.nas.cost import budget_band  # noqa: E402

import allocation  # noqa: E402
from benchkit import log, write_report  # noqa: E402

LIBRARY_LAND = ArchStepper.land


def _landing(shift: str | None = None, inner_only: bool = False) -> Callable:
    """A landing rule: the library's steps, with the controller's aim moved by the argmax's miss
    (``shift``: ``"miss"`` each step, ``"integral"`` accumulated) and/or only inner widths moving."""
    def land(self: ArchStepper, batches, max_steps: int, lr: float) -> list[dict]:
        s, base, offset, taken, batches = self.supernet, self.controller.aim, 0.0, [], iter(batches)
        frozen = [] if not inner_only else [
            *(g.alpha for n, g in s.groups().items() if g.alpha is not None and s.graph.groups[n].kind != "inner"),
            *s.betas.values()]
        saved = [p.detach().clone() for p in frozen]
        self.progress = 1.0
        try:
            while len(taken) < max_steps and not self.within():
                if shift is not None:
                    miss = self.current_cost() / self.full - base
                    offset = offset + miss if shift == "integral" else miss
                    self.controller.aim = base - offset
                taken.append(self.step(*next(batches), lr=lr))
                with torch.no_grad():  # Adam's momentum and weight decay would still move them a little
                    for p, v in zip(frozen, saved):
                        p.copy_(v)
                self.precision.update()
        finally:
            self.controller.aim = base
        return taken
    return land


RULES: dict[str, Callable] = {"default": LIBRARY_LAND, "aim-shift": _landing("miss"),
                              "aim-integral": _landing("integral"), "inner-only": _landing(inner_only=True),
                              "inner-aim-shift": _landing("miss", inner_only=True)}


def cell_dir(args: argparse.Namespace, seed: int) -> Path:
    return Path(args.output) / args.model / f"r{args.ratio}" / f"s{seed}" / args.method / "search"


def replay(args: argparse.Namespace, rule: str, seed: int, landing_lr: float | None) -> dict:
    """Resume a copy of one cell's search with ``rule``'s landing steps; the pre-decode argmax and the rest."""
    cell = cell_dir(args, seed)
    own = json.loads((cell / "metrics.json").read_text())
    tag = rule if landing_lr is None else f"{rule}@{landing_lr}"
    dst = Path(args.output) / "landing_replay" / tag / f"r{args.ratio}" / f"s{seed}"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(cell, dst)
    cfg = {"dataset": allocation.DATASET, "data_dir": args.data_dir, "seed": seed, "device": "cpu",
           "progress": False, "workers": 0, "teacher": str(Path(args.output) / args.model / "teacher" / f"e{args.teacher_epochs}"),
           "flops_ratio": args.ratio, "output": str(dst), "batch_size": args.batch_size, "epochs": args.search_epochs,
           "limit": args.limit // 2, "resume": True, **({} if landing_lr is None else {"landing_lr": landing_lr})}
    ArchStepper.land = RULES[rule]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            searching.search(cfg)
    finally:
        ArchStepper.land = LIBRARY_LAND
    m = json.loads((dst / "metrics.json").read_text())
    low, high = budget_band(args.ratio, args.tolerance)
    return {"rule": tag, "seed": seed, "cell_pre_decode": own["pre_decode_ratio"], "pre_decode": m["pre_decode_ratio"],
            "in_band": bool(low <= m["pre_decode_ratio"] <= high),
            "landing_steps": m["landing_steps"], "decode_moves": m["decode_moves"], "final": m["flops_ratio"]}


def report(args: argparse.Namespace, rows: list[dict]) -> str:
    lines = [f"Landing replay: {args.model} at FLOPs {args.ratio}, seeds {args.seeds} "
             f"(`python benchmarks/landing_replay.py --output {args.output} --ratio {args.ratio} --seeds "
             f"{' '.join(map(str, args.seeds))}`)", "",
             "| rule | seed | argmax at the search's end | cell's pre-decode argmax | replayed pre-decode argmax | in band | landing steps | decode moves |",
             "|------|------|----------------------------|--------------------------|----------------------------|---------|---------------|--------------|"]
    for r in rows:
        # the last epoch's derived (argmax) architecture, before any landing step
        end = json.loads((cell_dir(args, r["seed"]) / "arch_history.json").read_text())[-1]["flops_ratio"]
        lines.append(f"| {r['rule']} | {r['seed']} | {end:.4f} | {r['cell_pre_decode']:.4f} | {r['pre_decode']:.4f} | "
                     f"{'yes' if r['in_band'] else 'no'} | {r['landing_steps']} | {r['decode_moves']} |")
    lines.append("")
    for rule in dict.fromkeys(r["rule"] for r in rows):
        got = [r for r in rows if r["rule"] == rule]
        lines.append(f"- `{rule}`: {sum(r['in_band'] for r in got)}/{len(got)} in band")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", required=True, help="the allocation run's output directory")
    p.add_argument("--model", default="cifar_resnet56")
    p.add_argument("--method", default="tas")
    p.add_argument("--ratio", type=float, default=0.12)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 4, 5])
    p.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    p.add_argument("--landing-lrs", type=float, nargs="+", default=[None],
                   help="--landing-lr values to replay each rule at (default: the library's)")
    # the allocation run's settings (its command line; the replay must see the same data and search)
    p.add_argument("--limit", type=int, default=20000)
    p.add_argument("--val", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--search-epochs", type=float, default=1)
    p.add_argument("--teacher-epochs", type=int, default=40, help="the teacher run's length (its directory e<N>)")
    p.add_argument("--tolerance", type=float, default=0.1)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--doc", default=None, help="also write the table here (markdown)")
    p.add_argument("--fresh", action="store_true", help="replay cached cells again")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    allocation.register_dataset(args.data_dir, args.limit, args.val)
    cache_path = Path(args.output) / "landing_replay" / "results.json"
    cache = {} if args.fresh or not cache_path.is_file() else json.loads(cache_path.read_text())
    missing = [str(cell_dir(args, seed)) for seed in args.seeds if not (cell_dir(args, seed) / "state").is_dir()]
    if missing:
        print(f"error: no finished search with a saved state at {', '.join(missing)} (run benchmarks/allocation.py "
              "with the same --output, --ratios and --seeds first)", file=sys.stderr)
        return 2
    rows = []
    for rule in args.rules:
        for lr in args.landing_lrs:
            for seed in args.seeds:
                key = f"{args.model}/{args.method}/{args.ratio}/{rule}/{lr}/{seed}"
                if key not in cache:
                    cache[key] = replay(args, rule, seed, lr)
                    atomic_write_json(cache_path, cache)
                r = cache[key]
                log(f"{r['rule']} seed {seed}: pre-decode {r['cell_pre_decode']:.4f} -> {r['pre_decode']:.4f} "
                    f"({'in band' if r['in_band'] else 'outside'}; {r['landing_steps']} landing steps)")
                rows.append(r)
    text = report(args, rows)
    print(text)
    if args.doc:
        write_report(args.doc, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
