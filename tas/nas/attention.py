"""SequentialAttention++ block attention and its ACDC-style schedule (Yasuda et al., NeurIPS 2024).

TAS decides *how many* channels a group keeps; SA++ decides *which*. Every searched group gets one
logit per block of channels; the attention ``A = n·softmax(L)`` (mean 1) multiplies the group's
channels during the search, so the logits learn from the task loss which blocks matter. Blocks are
ranked by attention — not by weight magnitude — and a width candidate of ``c`` channels keeps the
top ``c / B`` blocks.

Over the search a :class:`SappSchedule` alternates phases: a dense warm-up, then rounds of
[sparsification → sparse → dense], ending sparse. During sparsification the pruned fraction of a
group ramps as ``s·(1 − e^{−ct}) / (1 − e^{−c})`` (c = 4), removing its lowest-attention blocks, with
``s`` = 1 − the group's current TAS width / its channels (the argmax moved into the budget, as the
final decode would: so the last mask leaves room for an architecture within budget); in a sparse
phase the mask is fixed; dense phases lift it. Optimiser state is reset at every phase
boundary (the paper reports this as crucial).

The search ends with the network it trained last. The mask stays fixed over the final sparse phase
while TAS's width distributions keep moving, so the final decode may not widen a group beyond its
unmasked blocks (:meth:`SappController.caps`: a wider candidate computed only those blocks, the
rest were multiplied by 0); :meth:`SappController.finalize` then sets the mask to the kept blocks.
Hard mode and the slim network apply the attention as search mode does, folded into the BN affine
(:mod:`tas.nas.ops`); optionally (``anneal``) it is instead annealed to 1 over the last phase.

No official SA++ code exists; this follows the paper's description.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

__all__ = ["constrained_attention", "sparsity_ramp", "SappSchedule", "SappController", "block_size_for", "PHASES"]

PHASES = ("warmup", "sparsify", "sparse", "dense")


def block_size_for(channels: int, widths: Sequence[int], conv_groups: int, requested: int) -> int:
    """Channels per attention block: ``requested`` reduced until every candidate is whole blocks.

    Grouped groups use one block per local position (one channel in each conv group), which keeps
    every selection balanced across conv groups.
    """
    if conv_groups > 1:
        return conv_groups
    return math.gcd(requested, channels, *widths)


def constrained_attention(logits: torch.Tensor, lo: float, hi: float, iters: int = 60) -> torch.Tensor:
    """``n·softmax(logits)`` projected onto {mean 1, lo ≤ A ≤ hi}.

    This is the Euclidean projection: ``clamp(a + shift, lo, hi)`` with the one shift that restores
    mean 1 (found by bisection; the clipped mean is monotone in the shift and spans [lo, hi], so
    both constraints hold exactly). Unclipped entries keep their gradient; the order is preserved.
    """
    if lo > 1 or hi < 1:
        raise ValueError(f"clip bounds [{lo}, {hi}] must contain 1")
    n = logits.numel()
    a = n * torch.softmax(logits, dim=-1)
    with torch.no_grad():
        left, right = lo - float(a.max()), hi - float(a.min())
        for _ in range(iters):
            mid = (left + right) / 2
            if float((a + mid).clamp(lo, hi).mean()) > 1:
                right = mid
            else:
                left = mid
        shift = (left + right) / 2
    return (a + shift).clamp(lo, hi)


def sparsity_ramp(t: float, s: float, c: float = 4.0) -> float:
    """Pruned fraction after ``t`` ∈ [0, 1] of a sparsification phase towards final sparsity ``s``."""
    t = min(max(t, 0.0), 1.0)
    return s * (1 - math.exp(-c * t)) / (1 - math.exp(-c))


@dataclass
class SappSchedule:
    """Phase of every step of a search of ``total_steps`` steps.

    Lengths are fractions of the search: a ``warmup`` dense phase, then ``rounds`` rounds of
    ``sparsify`` + ``sparse`` + ``dense``; the last round has no dense phase and its sparse phase
    runs to the end. With the defaults (0.2, 2 × (0.15 + 0.1 + 0.1)) the last sparse phase is 0.3.
    """

    total_steps: int
    warmup: float = 0.2
    sparsify: float = 0.15
    sparse: float = 0.1
    dense: float = 0.1
    rounds: int = 2

    def __post_init__(self) -> None:
        used = self.warmup + self.rounds * (self.sparsify + self.sparse + self.dense) - self.dense
        if self.rounds < 1 or min(self.warmup, self.sparsify, self.sparse, self.dense) < 0 or used > 1 + 1e-9:
            raise ValueError(f"SA++ phases use {used:.2f} of the search (must be <= 1 with rounds >= 1)")
        bounds = [("warmup", self.warmup)]
        for r in range(self.rounds):
            bounds += [("sparsify", self.sparsify), ("sparse", self.sparse)]
            if r < self.rounds - 1:
                bounds.append(("dense", self.dense))
        bounds[-1] = ("sparse", bounds[-1][1] + 1 - used)  # the last sparse phase absorbs the rest
        self._phases: list[tuple[str, int, int]] = []
        start = 0.0
        for name, length in bounds:
            a, b = round(start * self.total_steps), round((start + length) * self.total_steps)
            self._phases.append((name, a, b))
            start += length

    def phase(self, step: int) -> tuple[int, str, float]:
        """``(phase index, phase name, t)`` at ``step``, t ∈ [0, 1) the progress through the phase."""
        for i, (name, a, b) in enumerate(self._phases):
            if step < b or i == len(self._phases) - 1:
                return i, name, (step - a) / max(1, b - a)
        raise AssertionError("unreachable")

    @property
    def phases(self) -> list[tuple[str, int, int]]:
        """``(name, first step, end step)`` of every phase."""
        return list(self._phases)


class SappController:
    """Drives a :class:`~tas.nas.supernet.Supernet`'s SA++ masks through a :class:`SappSchedule`, one call per step.

    Dense phases (warm-up included) lift the masks; sparsification ramps each group's pruned
    fraction towards ``1 − TAS width / channels``, the width ``widths()`` returns (search.py: the
    budgeted decode of the current logits; default: their argmax); sparse phases keep the mask. Channels
    are re-ranked by attention every step. At every phase boundary the given optimisers (the
    weight SGD and the attention Adam, not TAS's architecture Adam) lose their state.

    With ``anneal`` every group's ``attn_strength`` falls linearly from 1 to 0 over the last
    phase (the attention towards 1), so the network ends without it; otherwise it stays 1 and the
    attention is folded into the slim network.
    """

    def __init__(self, supernet: Any, schedule: SappSchedule, optimizers: list[torch.optim.Optimizer],
                 anneal: bool = False, widths: Callable[[], Mapping[str, int]] | None = None) -> None:
        self.supernet, self.schedule, self.optimizers, self.anneal = supernet, schedule, optimizers, anneal
        self.widths = widths or (lambda: {n: g.widths[int(g.probs().argmax())] for n, g in supernet.groups().items()})
        self.phase_index: int | None = None
        self.resets = 0

    def _groups(self) -> dict[str, Any]:
        return {n: g for n, g in self.supernet.groups().items() if g.attn_logits is not None}

    def step(self, step: int) -> tuple[str, float]:
        """Set masks and rankings for ``step``; returns the phase name and mean scheduled sparsity."""
        index, name, t = self.schedule.phase(step)
        if self.phase_index is not None and index != self.phase_index:
            for opt in self.optimizers:
                opt.state.clear()
            self.resets += 1
        self.phase_index = index
        last = index == len(self.schedule.phases) - 1
        strength = 1.0 - t if self.anneal and last else 1.0
        sparsities = []
        targets = self.widths() if name == "sparsify" else {}
        for n, g in self._groups().items():
            g.attn_strength.fill_(strength)
            if name in ("warmup", "dense"):
                g.mask.fill_(True)
                g.rank_by_attention()
                sparsities.append(0.0)
            elif name == "sparsify":
                target = sparsity_ramp(t, 1 - targets[n] / g.channels)
                g.prune_lowest(int(round(target * g.mask.numel())))
                sparsities.append(target)
            else:
                g.rank_by_attention()
                sparsities.append(1 - float(g.mask.float().mean()))
        return name, (sum(sparsities) / len(sparsities) if sparsities else 0.0)

    def caps(self) -> dict[str, int]:
        """Per SA++ group, the widest candidate within its unmasked blocks: the final decode's bound.

        In the final sparse phase a candidate wider than the mask computed only the unmasked
        blocks (the others were multiplied by 0), so a final width beyond them would keep channels
        the network never used in that phase, at a cost the search did not pay.
        """
        caps = {}
        for n, g in self._groups().items():
            room = int(g.mask.sum()) * g.block_size
            caps[n] = max([w for w in g.widths if w <= room], default=g.widths[0])
        return caps

    @torch.no_grad()
    def finalize(self, arch: Any) -> None:
        """End of the search: each group's mask becomes exactly ``arch``'s kept blocks (a width
        below the cap drops further lowest-attention blocks), and an annealed attention ends at 1."""
        for n, g in self._groups().items():
            kept = torch.tensor(arch.groups[n]["indices"], dtype=torch.long, device=g.block_of.device)
            blocks = g.block_of[kept].unique()
            if blocks.numel() * g.block_size != kept.numel():
                raise ValueError(f"group {n}: the kept channels are not whole SA++ blocks")
            g.mask.fill_(False)
            g.mask[blocks] = True
            g.rank_by_attention()
            if self.anneal:
                g.attn_strength.fill_(0.0)
