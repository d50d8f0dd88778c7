"""Which channel order gives the best inherited prefix? The untrained prefix subnetwork per criterion.

For a trained teacher run and each ``--channel-order`` criterion (``none``, ``l1``, ``filters``,
``bn``, ``taylor``) this reorders a copy of the teacher (:func:`tas.prune.channel_order.order_teacher`), builds
the supernet, takes the uniform-width architecture at 30 % and 50 % of the FLOPs (full depth,
:func:`tas.baselines.magnitude.uniform_widths`), recalibrates BN in hard mode on the search's train
half and reports its top-1 on the search's val half (never the test set), with no training at all:
how good the channels a width's prefix inherits are. docs/architecture.md quotes the table.

    python train.py --model cifar_resnet20 --dataset digits --epochs 15 --output runs/t_digits
    python benchmarks/channel_order.py runs/t_digits --dataset digits
    python benchmarks/channel_order.py runs/t_fmnist --dataset fashion-mnist --limit 2000

Not a test: nothing here asserts.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import tas  # noqa: E402
from tas.train import engine  # noqa: E402
from tas.baselines import full_depths  # noqa: E402
from tas.baselines.magnitude import uniform_widths  # noqa: E402
from tas.prune.channel_order import CRITERIA, order_teacher  # noqa: E402
from tas.data import create_loaders  # noqa: E402
from tas.prune.load import load_run  # noqa: E402
from tas.nas.searcher import recalibrate_bn  # noqa: E402


def prefix_accuracy(run: str, dataset: str, limit: int | None, ratios: tuple[float, ...] = (0.3, 0.5),
                    criteria: tuple[str, ...] = tuple(c for c in CRITERIA if c != "task"),  # task: no task here
                    ) -> dict[str, list[tuple[float, float, float]]]:
    """``{criterion: [(target ratio, exact ratio, val top-1), ...]}`` for a teacher run."""
    teacher, cfg = load_run(run)
    size = cfg["input_size"][1]
    loaders = create_loaders(dataset, batch_size=64, seed=0, img_size=size, search_split=True, limit=limit,
                             augment=False)
    results = {}
    for criterion in criteria:
        model = copy.deepcopy(teacher)
        order_teacher(model, criterion, loaders["train"], batches=8)
        supernet = tas.create_supernet(model, input_size=cfg["input_size"], model_name=cfg["model"],
                                       model_kwargs=cfg["model_kwargs"])
        rows = []
        for ratio in ratios:
            widths, _ = uniform_widths(supernet, "flops", ratio)
            arch = supernet.make_arch(widths, full_depths(supernet))
            supernet.set_arch(arch)
            recalibrate_bn(supernet, loaders["train"], "cpu", seed=0)  # the same batches for every criterion
            rows.append((ratio, arch.flops_ratio, engine.evaluate(supernet, loaders["val"], "cpu")["top1"]))
        results[criterion] = rows
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="trained teacher run directory (train.py --output)")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--limit", type=int, default=None, help="at most this many images per search half")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5], help="FLOPs fractions kept")
    p.add_argument("--criteria", nargs="+", default=[c for c in CRITERIA if c != "task"],
                   choices=[c for c in CRITERIA if c != "task"])
    a = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    results = prefix_accuracy(a.run, a.dataset, a.limit, tuple(a.ratios), tuple(a.criteria))
    print("| criterion | " + " | ".join(f"{r:.0%} FLOPs (exact {x:.3f})" for r, x, _ in next(iter(results.values()))) + " |")
    print("|---|" + "---|" * len(next(iter(results.values()))))
    for criterion, rows in results.items():
        print(f"| {criterion} | " + " | ".join(f"{acc:.2f}" for _, _, acc in rows) + " |")
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
