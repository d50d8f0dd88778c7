"""The architecture step of a TAS search and the budget it keeps: α/β by Adam on CE + cost loss.

:class:`ArchStepper` owns the budget (FLOPs, params or measured latency, with an optional FLOPs
or params ceiling): the differentiable cost loss each step, and :meth:`ArchStepper.decode`, which
moves the final argmax into the budget band when a search ends outside it.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch

from .. import distributed
from ..train.amp import Precision
from ..train import engine
from .cost import COST_LOSSES, LagrangianCost, budget_band, cost_loss
from ..errors import DivergedError
from .supernet import Supernet

__all__ = ["ArchStepper", "ARCH_LR_SCHEDULES", "SHARP_VALUES"]

#: how the architecture step's learning rate moves over the search (``ArchStepper.progress``)
ARCH_LR_SCHEDULES = ("constant", "cosine")
#: the value of the controller's second constraint: the sharpened expected cost, or the argmax's
#: exact cost carrying the sharpened expectation's gradient (straight-through)
SHARP_VALUES = ("sharpened", "argmax")


class ArchStepper:
    """The architecture step: CE on a val batch + a budget term, Adam on α and β.

    The budget term is ``cost_loss="lagrangian"`` (default; :class:`~tas.nas.cost.LagrangianCost` on the
    expected cost ratio, aimed at the middle of the band, multipliers stepped by ``dual_lr`` after
    every step) or ``"tas"`` (the paper's ``cost_weight`` × ``±log E[cost]`` switched by the argmax).

    The budget is FLOPs or params (exact, from the cost model) or latency (predicted from a
    :class:`~tas.deploy.latency.LatencyTable` passed as ``latency``). ``ceiling=(metric, ratio)`` adds an
    upper bound on FLOPs or params next to a latency target: ``+log E[metric]`` while the argmax
    architecture exceeds it. ``fill=True`` makes :meth:`decode` spend the budget up to the target
    instead of stopping anywhere in the band. ``loss_fn`` scores the val batch (default: CE;
    :func:`~tas.train.distill.distillation_loss` for ``--arch-kd-alpha``). ``precision`` runs the CE
    forward under autocast and scales the backward (:class:`~tas.train.amp.Precision`; the caller calls
    its ``update`` once per iteration); the cost terms stay float32.

    Landing (``docs/benchmarks_search_landing.md``): ``lr_schedule="cosine"`` keeps the Adam learning
    rate for the first ``lr_hold`` of the search (the controller's time to bring the costs to the
    band) and then decays it to 0, and ``entropy_weight`` adds ``progress × weight ×`` the mean
    normalised entropy of the distributions (:meth:`mean_entropy`): the logits commit and settle, so
    the argmax, which is the final architecture, stops flipping across the band's edges in the last
    steps. The caller sets :attr:`progress` (0 at the first step, 1 at the last) before each step.
    Where the argmax still ends outside the band, :meth:`land` takes further steps until it is inside
    (``docs/benchmarks_search_landing_steps.md``); :meth:`decode` is the safety net after that.
    ``draws`` splits each val batch into that many chunks, each through its own Gumbel draw (:meth:`val_loss`);
    ``ce_weight`` scales the val loss in the step (0: the budget and entropy terms alone, an ablation).
    """

    def __init__(self, supernet: Supernet, metric: str, ratio: float, tolerance: float, cost_weight: float,
                 lr: float, weight_decay: float, latency: Any = None,
                 ceiling: tuple[str, float] | None = None, fill: bool = False, cost_loss: str = "lagrangian",
                 dual_lr: float = 1.0, dual_penalty: float = 20.0, sharp_temperature: float | None = 0.1,
                 sharp_value: str = "sharpened", entropy_weight: float = 0.0, lr_schedule: str = "constant",
                 lr_hold: float = 0.0, loss_fn: engine.LossFn | None = None,
                 precision: Precision | None = None, draws: int = 1, ce_weight: float = 1.0) -> None:
        if lr_schedule not in ARCH_LR_SCHEDULES:
            raise ValueError(f"unknown arch lr schedule {lr_schedule!r} (one of {', '.join(ARCH_LR_SCHEDULES)})")
        if cost_loss not in COST_LOSSES:
            raise ValueError(f"unknown cost loss {cost_loss!r} (one of {', '.join(COST_LOSSES)})")
        if sharp_value not in SHARP_VALUES:
            raise ValueError(f"unknown sharp value {sharp_value!r} (one of {', '.join(SHARP_VALUES)})")
        self.supernet, self.metric, self.tolerance, self.cost_weight = supernet, metric, tolerance, cost_weight
        self.latency, self.ceiling, self.fill = latency, ceiling, fill
        self.full = latency.full() if metric == "latency" else supernet.full[metric]
        self.target = ratio * self.full
        self.params = list(supernet.arch_parameters())
        self.precision = precision or Precision(device=next(supernet.parameters()).device)
        self.optimizer = torch.optim.Adam(self.params, lr=lr, betas=(0.5, 0.999), weight_decay=weight_decay)
        # Aimed at the band's middle (its top when filling): both edges are then half a band away.
        aim = ratio if fill else sum(budget_band(ratio, tolerance)) / 2
        self.sharp_temperature, self.sharp_value = sharp_temperature, sharp_value
        self.entropy_weight, self.progress = entropy_weight, 0.0
        self.lr, self.lr_schedule, self.lr_hold = lr, lr_schedule, lr_hold
        self.loss_fn, self.draws, self.ce_weight = loss_fn or engine.cross_entropy_loss(), draws, ce_weight
        self.controller = (LagrangianCost(aim, dual_lr, 1 if sharp_temperature is None else 2, dual_penalty)
                           if cost_loss == "lagrangian" else None)

    @classmethod
    def from_config(cls, supernet: Supernet, cfg: Any, **kwargs: Any) -> "ArchStepper":
        """The stepper a search's settings (a :class:`~tas.nas.config.SearchConfig`) describe; ``kwargs``
        adds what the settings do not hold (``latency``, ``loss_fn``, ``precision``)."""
        return cls(supernet, cfg.metric, cfg.ratio, cfg.tolerance, cfg.cost_weight, cfg.arch_lr, cfg.arch_weight_decay,
                   ceiling=cfg.ceiling, fill=cfg.fill, cost_loss=cfg.cost_loss, dual_lr=cfg.dual_lr,
                   dual_penalty=cfg.dual_penalty, sharp_temperature=cfg.sharp_temperature, sharp_value=cfg.sharp_value,
                   entropy_weight=cfg.entropy_weight, lr_schedule=cfg.arch_lr_schedule, lr_hold=cfg.arch_lr_hold,
                   draws=cfg.arch_draws, ce_weight=cfg.arch_ce_weight, **kwargs)

    def val_loss(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The val batch's loss, in :attr:`draws` chunks that each run through a Gumbel draw of their own.

        Nearly all the step-to-step noise of the logits' CE gradient is the Gumbel draw's, not the
        batch's (``benchmarks/arch_gradient_snr.py``): chunks with their own draws average it down at
        the compute of one batch."""
        chunks = list(zip(images.chunk(self.draws), targets.chunk(self.draws)))
        if len(chunks) == 1:
            return self.loss_fn(self.supernet, images, targets)[0]
        return sum(self.loss_fn(self.supernet, x, y)[0] * len(y) for x, y in chunks) / len(targets)

    def current_lr(self) -> float:
        """The architecture step's learning rate at :attr:`progress`: ``lr`` (constant), or ``lr`` until
        ``lr_hold`` of the search and a cosine from there to 0 at its end."""
        if self.lr_schedule == "constant":
            return self.lr
        q = max(0.0, self.progress - self.lr_hold) / (1.0 - self.lr_hold)
        return self.lr * 0.5 * (1 + math.cos(math.pi * q))

    def mean_entropy(self) -> torch.Tensor:
        """Mean normalised entropy (0 one-hot, 1 uniform) of every width and depth distribution."""
        s = self.supernet
        dists = [g.probs() for g in s.groups().values()] + [s.depth_probs(n) for n in s.graph.stages]
        hs = [-(p * torch.log(p.clamp_min(1e-12))).sum() / math.log(len(p)) for p in dists if len(p) > 1]
        return torch.stack(hs).mean() if hs else torch.zeros(())

    def current_cost(self) -> float:
        """Cost of the current argmax architecture (cheap: no Arch object is built)."""
        if self.metric == "latency":
            return self.latency.current(self.supernet)
        return self.supernet.cost.exact(self.metric, *self.supernet.argmax())

    def expected_cost(self) -> torch.Tensor:
        if self.metric == "latency":
            return self.latency.expected(self.supernet)
        return self.supernet.expected_cost(self.metric)

    def _ceiling_loss(self) -> torch.Tensor | None:
        if self.ceiling is None:
            return None
        over = self._over_ceiling(*self.supernet.argmax())
        return torch.log(self.supernet.expected_cost(self.ceiling[0])) if over else None

    def _cost_loss(self) -> tuple[torch.Tensor, float, torch.Tensor, float]:
        """``(budget term, its weight in the architecture loss, expected cost, argmax cost)``."""
        expected, current = self.expected_cost(), self.current_cost()
        extra = self._ceiling_loss()
        if self.controller is None:
            lc = cost_loss(expected, current, self.target, self.tolerance)
            return (lc if extra is None else lc + extra), self.cost_weight, expected, current
        ratios = [expected / self.full]
        if self.sharp_temperature is not None:
            with self.supernet.sharpened(self.sharp_temperature):
                sharp = self.expected_cost() / self.full
            if self.sharp_value == "argmax":
                # the argmax's own ratio as the value, the sharpened expectation's gradient
                sharp = sharp + (current / self.full - sharp).detach()
            ratios.append(sharp)
        self._ratios = torch.stack([r.reshape(()).double() for r in ratios])
        lc = self.controller.loss(self._ratios)
        return (lc if extra is None else lc + self.cost_weight * extra), 1.0, expected, current

    def step(self, images: torch.Tensor, targets: torch.Tensor, lr: float | None = None) -> dict[str, float]:
        """One Adam step on α and β (then one ascent step on the multipliers) at ``lr`` (default:
        :meth:`current_lr`); in a distributed run the CE is the global batch's (all ranks)."""
        with self.precision.autocast():
            ce = self.val_loss(images, targets)
        lc, weight, expected, current = self._cost_loss()
        loss = self.ce_weight * ce + weight * lc.to(ce.device)
        entropy = self.mean_entropy()
        if self.entropy_weight:  # ramped: the early search explores, the late one commits
            loss = loss + self.entropy_weight * self.progress * entropy.to(ce.device)
        self.optimizer.zero_grad(set_to_none=True)
        # Only α and β: the weight gradients of this val batch would be discarded anyway.
        self.precision.backward(loss * distributed.loss_scale(targets.numel()), inputs=self.params)
        n, (ce_sum,) = distributed.reduce_gradients(self.params, targets.numel(), [ce.item() * targets.numel()])
        ce_value, lc_value = ce_sum / max(n, 1), lc.item()
        loss_value = ce_value + weight * lc_value
        if not math.isfinite(loss_value):
            bad = [n for n, v in (("arch CE", ce_value), ("cost loss", lc_value)) if not math.isfinite(v)]
            raise DivergedError(f"architecture loss is {loss_value} (non-finite: {', '.join(bad) or 'sum'})")
        lr = self.current_lr() if lr is None else lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.precision.step(self.optimizer)
        terms = {"arch_loss": loss_value, "arch_ce": ce_value, "cost_loss": lc_value, "arch_lr": lr,
                 "entropy": entropy.item(),
                 "expected_ratio": expected.item() / self.full, "derived_ratio": current / self.full,
                 "band_low": self.band_low / self.full}
        if self.controller is not None:
            ratios = self._ratios.detach().cpu()
            self.controller.ascend(ratios)
            lam = self.controller.lambdas
            terms.update(lambda1=float(lam[0, 0]), lambda2=float(lam[0, 1]))
            if len(ratios) > 1:
                terms.update(sharp_ratio=float(ratios[1]), sharp_lambda1=float(lam[1, 0]), sharp_lambda2=float(lam[1, 1]))
        return terms

    def land(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], max_steps: int, lr: float
             ) -> list[dict[str, float]]:
        """Architecture steps past the search's end, at ``lr``, until the argmax lies in the band
        (:meth:`within`) or ``max_steps`` were taken; the terms of each step taken.

        The same steps as the search's (CE on a val batch + the budget term, the entropy term at its
        full weight), so what moves the argmax into the band is still the data and the controller, not
        the decode; an argmax already in the band takes none.
        """
        self.progress = 1.0
        taken: list[dict[str, float]] = []
        batches = iter(batches)
        while len(taken) < max_steps and not self.within():  # checked before a batch is drawn
            images, targets = next(batches)
            taken.append(self.step(images, targets, lr=lr))
            self.precision.update()  # as the search does after each step (fp16's GradScaler)
        return taken

    @property
    def band_low(self) -> float:
        """The bottom of the budget band the decode aims for (the target itself with ``fill``)."""
        return self._band_low(self.target)

    def _band_low(self, target: float) -> float:
        return target if self.fill else budget_band(target, self.tolerance)[0]

    def _cost_of(self, widths: dict[str, int], depths: dict[str, int]) -> float:
        if self.metric == "latency":
            return self.latency.exact(widths, depths)
        return self.supernet.cost.exact(self.metric, widths, depths)

    def _over_ceiling(self, widths: dict[str, int], depths: dict[str, int]) -> bool:
        if self.ceiling is None:
            return False
        metric, ratio = self.ceiling
        return self.supernet.cost.exact(metric, widths, depths) > ratio * self.supernet.full[metric]

    @torch.no_grad()
    def decode(self, caps: dict[str, int] | None = None, target: float | None = None
               ) -> tuple[dict[str, int], dict[str, int], int]:
        """The final architecture: the argmax, moved into the budget at the least loss of probability.

        A search can end with its argmax outside the tolerance band (the cost loss is a nudge, and
        short searches take few architecture steps). From the argmax, while the cost is over the
        target (or a ceiling), one group's width or one stage's depth steps down to its next
        candidate (into the band before still over it, before under it), the one that gives up
        the least log-probability per unit of cost saved; while it is under the band,
        the step up that gains the most log-probability per unit of cost and stays within the budget;
        then any step up that gains log-probability and still fits. The choice respects what the
        distributions learned, where gradient steps on the cost alone would move every group alike.

        With ``fill`` the bottom of the band is the target itself: steps up continue, least
        log-probability given up per unit of cost first, until no step fits. A latency target
        is one to hit, and its prediction carries a few per cent of error either way; an argmax
        left at the bottom of a band 10 % of the target wide would then measure up to 15 % under it.

        ``target`` replaces the budget's for this decode (:mod:`tas.nas.latency_budget`'s corrections).
        ``caps`` bounds groups' widths (SA++: :meth:`~tas.nas.attention.SappController.caps`); the
        probability of the candidates above a cap counts as the cap's, since they computed its channels.

        Returns:
            ``(widths, depths, moves)``; ``moves`` is 0 when the argmax already met the budget.
        """
        s = self.supernet
        options = {("w", n): (list(g.widths), torch.log(g.probs().double()).tolist()) for n, g in s.groups().items()}
        options.update({("d", n): (list(s.stage_depths[n]), torch.log(s.depth_probs(n).double()).tolist())
                        for n in s.graph.stages})
        for n, cap in (caps or {}).items():
            vals, lp = options[("w", n)]
            k = vals.index(cap)
            options[("w", n)] = (vals[: k + 1], lp[:k] + [torch.tensor(lp[k:], dtype=torch.float64).logsumexp(0).item()])
        idx = {k: max(range(len(lp)), key=lp.__getitem__) for k, (_, lp) in options.items()}
        eps = 1e-12 * self.full
        target = self.target if target is None else float(target)

        def arch(i: dict) -> tuple[dict[str, int], dict[str, int]]:
            return ({n: options[("w", n)][0][i[("w", n)]] for (kind, n) in options if kind == "w"},
                    {n: options[("d", n)][0][i[("d", n)]] for (kind, n) in options if kind == "d"})

        def fits(trial: dict, trial_cost: float) -> bool:
            return trial_cost <= target and not self._over_ceiling(*arch(trial))

        def best_step(direction: int, score) -> tuple[dict, float] | None:
            """The one-candidate step (``direction`` -1 down, +1 up) that ``score(gain in
            log-probability, new cost, trial)`` rates highest; a None score rules a step out."""
            best = None
            for k, (vals, lp) in options.items():
                j = idx[k] + direction
                if not 0 <= j < len(vals):
                    continue
                trial = {**idx, k: j}
                trial_cost = self._cost_of(*arch(trial))
                value = score(lp[j] - lp[idx[k]], trial_cost, trial)
                if value is not None and (best is None or value > best[0]):
                    best = (value, trial, trial_cost)
            return None if best is None else best[1:]

        low = self._band_low(target)
        cost, moves = self._cost_of(*arch(idx)), 0
        steps = [
            # over budget: down, least log-probability per cost saved; into the band > over > under it
            (lambda: cost > target or self._over_ceiling(*arch(idx)),
             -1, lambda gain, c, t: (0 if self.fill else (c >= low) + (low <= c <= target), gain / max(cost - c, eps))),
            # under the band: up, most log-probability per unit of cost added, within the budget (a
            # step that adds no cost, e.g. a width only dropped blocks use, brings nothing closer)
            (lambda: cost < low, +1, lambda gain, c, t: gain / (c - cost) if cost < c and fits(t, c) else None),
            # once moved: spend what is left where the logits want it (a shrink step can overshoot
            # deep into the band, e.g. a whole block)
            (lambda: moves > 0, +1, lambda gain, c, t: gain if gain > 0 and fits(t, c) else None),
        ]
        for needed, direction, score in steps:
            while needed():
                step = best_step(direction, score)
                if step is None:  # nothing left to move (check_target rules this out when shrinking)
                    break
                (idx, cost), moves = step, moves + 1
        widths, depths = arch(idx)
        return widths, depths, moves

    def within(self, widths: dict[str, int] | None = None, depths: dict[str, int] | None = None) -> bool:
        """Whether an architecture (default: the current argmax) meets the budget band and the ceiling."""
        if widths is None or depths is None:
            widths, depths = self.supernet.argmax()
        cost = self._cost_of(widths, depths)
        low, high = budget_band(self.target, self.tolerance)
        return low <= cost <= high and not self._over_ceiling(widths, depths)
