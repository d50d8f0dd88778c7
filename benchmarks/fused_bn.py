"""Where does the fused candidate BN pay? Per layer, fused vs K-fragment, at the layers' real shapes.

For every :class:`tas.nas.ops.SearchBN` of each model's supernet (random weights, search mode, alpha at
its initialisation) this times one training-mode forward + backward of that layer alone, on an
input of the layer's real shape (batch, widest sampled channels, height, width), both ways:
:func:`tas.nas.ops.fused_candidate_bn` (one BN + one 1×1 mixing conv) and the K-fragment mixture
(:func:`tas.nas.ops.mix_fragments`: a BN, a CWI product and a weighted sum per fragment). Each round
draws one set of fragments and runs both, in alternating order; the table gives, per group width,
the median over rounds and layers of fused / unfused (below 1: fusing wins). The width where the
ratio crosses 1 is what :data:`tas.nas.ops.FUSED_BN_MAX_CHANNELS` is set from.

    python benchmarks/fused_bn.py                     # cifar_resnet20 (32 px, B 64) and resnet18 (64 px, B 32)
    python benchmarks/fused_bn.py --threads 1 2 --rounds 40

Not a test: nothing here asserts.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import timm
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tas  # noqa: E402,F401  (registers cifar_resnet*)
from tas.nas.ops import SearchBN, batch_norm_at, fusable, fused_candidate_bn, mix_fragments  # noqa: E402
from tas.nas.supernet import create_supernet  # noqa: E402


def layer_inputs(model: str, size: int) -> list[tuple[SearchBN, tuple[int, int]]]:
    """Each SearchBN of the model's supernet with its input's spatial size."""
    s = create_supernet(timm.create_model(model, num_classes=10), input_size=(3, size, size)).train()
    shapes: dict[SearchBN, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, i: shapes.__setitem__(m, tuple(i[0].shape[2:])))
             for m in s.modules() if isinstance(m, SearchBN)]
    with torch.no_grad():
        s(torch.randn(2, 3, size, size))
    for h in hooks:
        h.remove()
    return [(m, hw) for m, hw in shapes.items()]


def time_once(fn, x: torch.Tensor, r: torch.Tensor) -> float:
    t0 = time.perf_counter()
    y = fn(x)
    torch.autograd.grad((y * r).sum(), [x] + [p for p in fn.params if p.requires_grad], allow_unused=True)
    return time.perf_counter() - t0


def measure(model: str, size: int, batch: int, rounds: int) -> dict[int, list[float]]:
    """Per group width: fused / unfused time ratios, one per layer and round."""
    ratios: dict[int, list[float]] = defaultdict(list)
    for layer, (h, w) in layer_inputs(model, size):
        g = layer.group[0]
        params = list(layer.parameters())
        for i in range(rounds + 2):
            g.sample(5.0, 2, None)
            if not fusable(layer.bns, g):
                break
            x = torch.randn(batch, g.active.numel(), h, w, requires_grad=True)
            r = torch.randn(batch, g.active.numel(), h, w)

            def fused(t):
                return fused_candidate_bn(layer.bns, t, g)

            def unfused(t):
                return mix_fragments(t, g, lambda j, f, c: batch_norm_at(layer.bns[j], f, c, g.scale_at(c)))

            fused.params = unfused.params = params
            pair = (fused, unfused) if i % 2 else (unfused, fused)
            times = {fn: time_once(fn, x, r) for fn in pair}
            if i >= 2:  # warm-up
                ratios[g.channels].append(times[fused] / times[unfused])
    return ratios


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["cifar_resnet20:32:64", "resnet18:64:32"],
                   help="name:input size:batch")
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--rounds", type=int, default=20)
    a = p.parse_args(argv)
    print("| model | threads | group width | layers x rounds | fused / unfused (median) | IQR |")
    print("|---|---|---|---|---|---|")
    for threads in a.threads:
        torch.set_num_threads(threads)
        for spec in a.models:
            name, size, batch = spec.split(":")
            ratios = measure(name, int(size), int(batch), a.rounds)
            for c in sorted(ratios):
                q = statistics.quantiles(ratios[c], n=4)
                print(f"| {name} | {threads} | {c} | {len(ratios[c])} | **{statistics.median(ratios[c]):.2f}** "
                      f"| {q[0]:.2f}-{q[2]:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
