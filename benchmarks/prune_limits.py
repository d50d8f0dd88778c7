"""The pruning-limit estimate (:mod:`tas.prune.limits`) against where accuracy actually collapses.

For a teacher run it computes the estimate of every channel group, then prunes one group at a
time (all others full) to decreasing widths, removing the channels whose weights have the smallest
norm (the order the estimate assumes), and evaluates test top-1 of the inherited slim network
before any training. A group's measured collapse width is the narrowest width reached, scanning
down, before top-1 first falls more than ``--drop`` points below the teacher's. Prints a Markdown
table (and writes it to ``--output``). Not a test: nothing here asserts.

    python benchmarks/prune_limits.py --teacher runs/teacher --dataset digits --img-size 16
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tas  # noqa: E402
from tas.train import engine  # noqa: E402
from tas.prune.arch import Arch  # noqa: E402
from tas.data import create_loaders  # noqa: E402
from tas.prune.families import describe_model  # noqa: E402
from tas.prune.limits import channel_sq_norms, estimate_limits  # noqa: E402
from tas.prune.load import load_run  # noqa: E402


def one_group_arch(full: dict, group: str, keep: list[int]) -> Arch:
    d = {**full, "groups": {**full["groups"], group: {**full["groups"][group], "width": len(keep),
                                                        "indices": sorted(keep)}}}
    return Arch.from_dict(d)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--probes", type=int, default=1)
    p.add_argument("--drop", type=float, default=1.0, help="top-1 points below the teacher that count as collapse")
    p.add_argument("--output", default=None)
    args = p.parse_args()
    teacher, config = load_run(args.teacher)
    loaders = create_loaders(args.dataset, batch_size=64, img_size=args.img_size, limit=args.limit, augment=False)
    top1 = lambda m: engine.evaluate(m, loaders["test"], "cpu")["top1"]  # noqa: E731
    base = top1(teacher)
    calib = [b for _, b in zip(range(args.batches), loaders["train"])]
    t0 = time.perf_counter()
    limits = estimate_limits(teacher, calib, steps=args.steps, probes=args.probes)
    est_s = time.perf_counter() - t0
    graph = describe_model(teacher)
    norms = channel_sq_norms(teacher, graph)
    full = tas.create_supernet(teacher, input_size=config["input_size"], model_name=config["model"],
                               model_kwargs=config["model_kwargs"]).full_arch().to_dict()
    rows = []
    for name, lim in limits.items():
        c, q = lim.channels, graph.groups[name].conv_groups
        order = torch.argsort(norms[name], descending=True).tolist()  # strongest first
        measured, accs = c, []
        for frac in (0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125):
            w = max(q, int(round(frac * c / q)) * q)
            acc = top1(tas.materialize(teacher, one_group_arch(full, name, order[:w])))
            accs.append(f"{w}:{acc:.0f}")
            if acc < base - args.drop:
                break
            measured = w
        rows.append(f"| {name} | {c} | {lim.params} | {lim.curvature:.2g} | {lim.width} ({lim.ratio:.2f}) | "
                    f"{measured} ({measured / c:.2f}) | {' '.join(accs)} |")
        print(rows[-1], flush=True)
    head = [f"teacher {args.teacher}: test top-1 {base:.2f} %, ε = {next(iter(limits.values())).epsilon:.3g} "
            f"({sum(len(y) for _, y in calib)} calibration images), estimate {est_s:.0f} s "
            f"({args.steps} Lanczos steps, {args.probes} probe(s) per group)", "",
            "| group | channels | weights D | mean abs. λ | estimated limit width | measured collapse width "
            f"(top-1 > teacher − {args.drop:g}) | width:top-1 % scanned |", "|---|---|---|---|---|---|---|"]
    text = "\n".join(head + rows) + "\n"
    print(text)
    if args.output:
        Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
