"""Top-1 of a slim network before any training: ``--init inherit`` against ``--init reconstruct``.

For every ``--arch`` (arch.json files or search run directories, all pruned from ``--teacher``), it
builds the slim network both ways, as ``train.py --arch … --init …`` does before its first step
(:func:`tas.materialize`, then :func:`tas.reconstruct` on ``--recon-batches`` training batches),
and evaluates each on the test split. Prints a Markdown table (and writes it to ``--output`` when
given). Not a test: nothing here asserts.

    python benchmarks/reconstruct.py --teacher runs/teacher --dataset digits --img-size 16 \\
        --arch runs/l1-0.5 runs/l1-0.25
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
from tas.data import create_loaders  # noqa: E402
from tas.train.distill import load_arch  # noqa: E402
from tas.prune.reconstruct import calibration_batches  # noqa: E402
from tas.prune.load import load_run  # noqa: E402


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, batches: list[torch.Tensor]) -> torch.nn.Module:
    """Re-estimate every BatchNorm's running statistics on ``batches`` (cumulative average): the
    cheapest repair of an inherited slim network, to tell reconstruction's gain from it."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    for x in batches:
        model(x)
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--arch", nargs="+", required=True)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--recon-batches", type=int, nargs="+", default=[8])
    p.add_argument("--ridge", type=float, default=1e-3)
    p.add_argument("--output", default=None, help="also write the table to this Markdown file")
    args = p.parse_args()
    torch.manual_seed(0)
    teacher, _ = load_run(args.teacher)
    loaders = create_loaders(args.dataset, batch_size=args.batch_size, img_size=args.img_size, limit=args.limit)
    top1 = lambda m: engine.evaluate(m, loaders["test"], "cpu")["top1"]  # noqa: E731
    rows = [f"teacher test top-1: {top1(teacher):.2f} %", "",
            "| arch | method | FLOPs kept | calib. images | inherit top-1 | inherit + BN recal. top-1 | "
            "reconstruct top-1 | layers | rel. output error inherit → reconstruct (mean over layers) | time |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for path in args.arch:
        arch = load_arch(path)
        inherit = top1(tas.materialize(teacher, arch))
        for nb in args.recon_batches:
            slim = tas.materialize(teacher, arch)
            batches = calibration_batches(loaders["train"], nb)
            recal = top1(recalibrate_bn(tas.materialize(teacher, arch), batches))
            t0 = time.perf_counter()
            fits = tas.reconstruct(slim, teacher, batches, ridge=args.ridge)
            dt = time.perf_counter() - t0
            before = sum(f.before for f in fits) / len(fits)
            after = sum(f.after for f in fits) / len(fits)
            rows.append(f"| {path} | {arch.method} | {arch.flops_ratio:.3f} | {sum(len(b) for b in batches)} | "
                        f"{inherit:.2f} % | {recal:.2f} % | {top1(slim):.2f} % | {len(fits)} | {before:.3f} → {after:.3f} | "
                        f"{dt:.1f} s |")
            print(rows[-1], flush=True)
    text = "\n".join(rows) + "\n"
    print(text)
    if args.output:
        Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
