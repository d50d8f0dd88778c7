"""Where a search step's time goes: torch.profiler operator tables and the FLOPs a search forward computes.

Tools for looking at search speed, shared by ``benchmarks/search_overhead.py --profile`` and anyone
profiling a supernet; nothing here changes a supernet's weights or architecture logits (sampling
does draw from its generator and leaves the last draw's fragments in place).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, Mapping

from torch.profiler import ProfilerActivity, profile

from .supernet import Supernet

__all__ = ["OpRow", "op_table", "sampled_flops"]


@dataclass(frozen=True)
class OpRow:
    """One operator of :func:`op_table`: its self CPU time and its calls, both per step."""

    name: str
    ms_per_step: float
    calls_per_step: int


def op_table(steps: Mapping[str, Callable[[], object]], repeats: int = 5, top: int = 12
             ) -> dict[str, list[OpRow]]:
    """torch.profiler's top ``top`` operators by self CPU time for each of ``steps``.

    Each step (a label and a callable doing one step, e.g. a dense training step or a search weight
    step) runs ``repeats`` times under its own profiler; times and calls are per step. Each list ends
    with an ``"(all operators)"`` row: the total self time and calls of every operator, so the top
    rows can be read as shares of it. Warm the steps up first: the first call's allocations count.
    """
    out: dict[str, list[OpRow]] = {}
    n = max(1, repeats)
    for label, step in steps.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(n):
                step()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        rows = [OpRow(e.key, e.self_cpu_time_total / 1e3 / n, e.count // n) for e in events[:top]]
        total = sum(e.self_cpu_time_total for e in events)
        rows.append(OpRow("(all operators)", total / 1e3 / n, sum(e.count for e in events) // n))
        out[label] = rows
    return out


def sampled_flops(supernet: Supernet, draws: int = 200) -> tuple[float, float]:
    """FLOPs a search-mode forward of ``supernet`` computes, relative to the full network, averaged
    over ``draws`` samples; and, for comparison, the mean FLOPs ratio of a random architecture.

    A search forward runs every conv once at the widest of its groups' sampled widths (the narrower
    candidates are fragments of it) and every block of every stage, so its cost is the exact FLOPs
    of those widths at full depth (:meth:`~tas.nas.cost.CostModel.exact`). A random architecture
    (:meth:`Supernet.random_arch`) is what a slim network of the space costs on average. Both use
    the supernet's current architecture distribution and its generator.
    """
    full_depths = {name: stage.num_blocks for name, stage in supernet.graph.stages.items()}
    active, candidates = [], []
    for _ in range(max(1, draws)):
        supernet.sample()
        widths = {name: int(g.active.numel()) for name, g in supernet.groups().items()}
        active.append(supernet.cost.exact("flops", widths, full_depths) / supernet.full["flops"])
        candidates.append(supernet.random_arch(supernet.generator).flops_ratio)
    return statistics.mean(active), statistics.mean(candidates)
