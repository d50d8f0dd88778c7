"""Does ``torch.compile`` pay for the search's weight step? Eager against compiled, paired.

The weight step (supernet in search mode, cross-entropy, backward into the weights, SGD) of
cifar_resnet20 (32 px, batch 64) runs eagerly and with the supernet wrapped in ``torch.compile``
(default inductor backend, ``dynamic=True``: every step samples other widths, so other shapes).
After warm-up steps (which include the compilations), rounds alternate the two and the median of
the per-round ratios compiled / eager is printed, with the time the warm-up (compilation) took.

    python benchmarks/compile_step.py --steps 20 --threads 1

Not a test: nothing here asserts.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tas  # noqa: E402,F401  (registers cifar_resnet*)
from tas.nas.supernet import create_supernet  # noqa: E402


def weight_step(net, forward, opt, x, y) -> float:
    t0 = time.perf_counter()
    loss = F.cross_entropy(forward(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward(inputs=list(net.weight_parameters()))
    opt.step()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    eager = create_supernet(timm.create_model(a.model, num_classes=10), input_size=(3, a.size, a.size)).train()
    comp = copy.deepcopy(eager)
    compiled = torch.compile(comp, dynamic=True)
    runs = {"eager": (eager, eager, torch.optim.SGD(list(eager.weight_parameters()), lr=0.01)),
            "compiled": (comp, compiled, torch.optim.SGD(list(comp.weight_parameters()), lr=0.01))}
    x, y = torch.randn(a.batch, 3, a.size, a.size), torch.randint(0, 10, (a.batch,))
    t0 = time.perf_counter()
    for _ in range(a.warmup):
        weight_step(*runs["compiled"], x, y)
    warm = time.perf_counter() - t0
    for _ in range(a.warmup):
        weight_step(*runs["eager"], x, y)
    ratios, times = [], {"eager": [], "compiled": []}
    for i in range(a.steps):
        order = ("eager", "compiled") if i % 2 else ("compiled", "eager")
        t = {k: weight_step(*runs[k], x, y) for k in order}
        for k in t:
            times[k].append(t[k])
        ratios.append(t["compiled"] / t["eager"])
    q = statistics.quantiles(ratios, n=4)
    print(f"{a.model} {a.size}px batch {a.batch}, {a.threads} thread(s): eager {1e3 * statistics.median(times['eager']):.1f} ms, "
          f"compiled {1e3 * statistics.median(times['compiled']):.1f} ms, compiled/eager {statistics.median(ratios):.2f}x "
          f"[IQR {q[0]:.2f}-{q[2]:.2f}] over {a.steps} paired steps; warm-up incl. compilation {warm:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
