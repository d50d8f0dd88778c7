"""Task-aware calibration against l1 at equal FLOPs: accuracy on a Fashion-MNIST sub-task.

For a trained teacher run (default: the one ``benchmarks/compare.py --quick`` trains) and a task of
a few classes (default 0, 2, 6: T-shirt/top, pullover, shirt, the classes the teacher confuses
most), this prunes the teacher to the same uniform widths at each FLOPs ratio with

* ``l1``: the channels of largest producer-filter L1 norm (data-free);
* ``task-aware``: the channels of highest task-aware score
  (:func:`tas.prune.channel_order.task_aware_scores`; general calibration: ``--batches`` unaugmented
  batches of the teacher's training subset, task calibration: as many batches of its task samples;
  one run per ``--seeds`` seed, which changes the calibration batches),

and reports the accuracy of each pruned network on a validation split of task images: training
images of the task classes the teacher never saw (from index 30000 of the training split on,
``--val`` of them), as materialised (no training) and after re-estimating its BatchNorm statistics on
20 general training batches (the cheap repair every pruned network gets before fine-tuning). *task
top-1*: the 10-way prediction is right; *within task*: the arg-max over the task's logits only.

    python benchmarks/compare.py --quick                  # trains the teacher (cached)
    python benchmarks/task_aware.py                       # ~2 min on one core

Not a test: nothing here asserts.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402

from tas.baselines import create_baseline_arch  # noqa: E402
from tas.prune.channel_order import class_batches  # noqa: E402
from tas.cli import format_table  # noqa: E402
from tas.data import create_dataset, create_loaders  # noqa: E402
from tas.prune.materialize import materialize  # noqa: E402
from tas.prune.load import load_run  # noqa: E402
from tas.nas.searcher import recalibrate_bn  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@torch.no_grad()
def task_accuracy(model: torch.nn.Module, loader: DataLoader, classes: list[int]) -> tuple[float, float]:
    """``(10-way top-1, top-1 among the task's logits)`` in percent on ``loader``."""
    model.eval()
    hit = within = total = 0
    idx = torch.tensor(classes)
    for x, y in loader:
        logits = model(x)
        hit += int((logits.argmax(1) == y).sum())
        within += int((idx[logits[:, idx].argmax(1)] == y).sum())
        total += len(y)
    return 100.0 * hit / total, 100.0 * within / total


def measure(model: torch.nn.Module, val: DataLoader, calib: DataLoader, classes: list[int]) -> list[float]:
    raw = task_accuracy(model, val, classes)
    with torch.no_grad():
        recalibrate_bn(model, calib, "cpu")
    return [*raw, *task_accuracy(model, val, classes)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default=str(REPO / "runs/compare/quick/cifar_resnet20/teacher"))
    p.add_argument("--task-classes", type=int, nargs="+", default=[0, 2, 6])
    p.add_argument("--ratios", type=float, nargs="+", default=[0.7, 0.5, 0.3])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batches", type=int, default=8, help="calibration batches of 64 (general; task alike)")
    p.add_argument("--limit", type=int, default=4000, help="the teacher's training subset (calibration data)")
    p.add_argument("--val", type=int, default=1500, help="unseen training images of the task classes")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    teacher, cfg = load_run(a.teacher)
    size, name = cfg["input_size"][1], cfg["model"]
    train = create_dataset("fashion-mnist", "train", img_size=size, augment=False)
    unseen = [i for i in range(30000, len(train)) if train.targets[i] in a.task_classes][: a.val]
    val = DataLoader(Subset(train, unseen), batch_size=256)
    rows, results = [], {}
    base = measure(materialize(teacher, create_baseline_arch("uniform", teacher, 1.0, input_size=cfg["input_size"],
                                                             model_name=name)), val,
                   create_loaders("fashion-mnist", batch_size=64, img_size=size, limit=a.limit, augment=False)["train"],
                   a.task_classes)
    rows.append(["teacher", "1.00", "1.000", *(f"{v:.2f}" for v in base), "1"])
    for ratio in a.ratios:
        for method in ("l1", "task-aware"):
            cells = []
            for seed in (a.seeds if method == "task-aware" else a.seeds[:1]):
                loader = create_loaders("fashion-mnist", batch_size=64, seed=seed, img_size=size, limit=a.limit,
                                        augment=False)["train"]
                opts = {}
                if method == "task-aware":
                    opts = {"batches": [b for _, b in zip(range(a.batches), loader)],
                            "task_batches": class_batches(loader, a.task_classes, a.batches)}
                arch = create_baseline_arch(method, teacher, ratio, input_size=cfg["input_size"], model_name=name,
                                            **opts)
                cells.append((arch.flops_ratio, measure(materialize(teacher, arch), val, loader, a.task_classes)))
            results[(ratio, method)] = cells

            def ms(k: int) -> str:
                v = [c[1][k] for c in cells]
                return f"{statistics.mean(v):.2f}" + (f" ± {statistics.stdev(v):.2f}" if len(v) > 1 else "")
            rows.append([method, f"{ratio:.2f}", f"{cells[0][0]:.3f}", ms(0), ms(1), ms(2), ms(3), str(len(cells))])
    header = ["method", "FLOPs target", "FLOPs kept", "task top-1 % (pruned)", "within task % (pruned)",
              "task top-1 % (BN recal.)", "within task % (BN recal.)", "runs"]
    print(f"teacher {a.teacher}, task classes {a.task_classes}, {len(unseen)} unseen task images, "
          f"{a.batches} calibration batches of 64; {time.perf_counter() - t0:.0f}s")
    print(format_table(rows, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
