"""Pruning plasticity with neuroregeneration (GraNet; Liu et al., NeurIPS 2021), structured, on the TAS search space.

GraNet prunes *during* training: the sparsity rises from ``s_i`` to ``s_f`` along the gradual
magnitude pruning schedule of Zhu & Gupta,

    s_t = s_f + (s_i − s_f) · (1 − (t − t0) / (n·Δt))³,    t ∈ {t0, t0 + Δt, …, t0 + n·Δt},

and after each pruning step it *regenerates*: a fraction ``r_t`` of the surviving weights with the
smallest magnitude is removed and as many zeroed weights with the largest gradient magnitude are
grown back (at zero), so the sparsity stays on the schedule while connections that the loss asks
for return; ``r_t`` decays with cosine annealing. The paper calls the network's ability to recover
from a pruning step its *pruning plasticity* and shows that regeneration raises it.

Here the unit is a channel of a group of the family adapter (:mod:`tas.families`), so the result is
an :class:`~tas.arch.Arch` of the search space that the materialiser, distillation and export take
like any other; the teacher is fine-tuned for ``epochs`` (one epoch = one pass over the training
split, the same unit as TAS's search epochs) with channel masks:

* **masks** are 0/1 gates on every conv and BN output that produces a group's channels (a masked
  channel reads as zero everywhere, exactly the slim network; the tests' zeroing oracle);
* **sparsity** is the cost sparsity ``1 − cost / full`` of the budget's metric (FLOPs by default):
  ``s_i = 0`` (the dense teacher) and ``s_f = 1 − ratio``; mask updates come every ``Δt`` steps,
  the ``n = prune_steps`` scheduled ones within the first ``prune_until`` of the run, and
  regeneration alone (at ``s_f``) at the same rhythm after it, as in the paper's code;
* **pruning** at an update removes, globally, the channel units of lowest filter magnitude until
  the exact cost (the supernet's cost model, full depth) is within ``full · (1 − s_t)``
  (:class:`~tas.baselines.shrink.WidthState`: a group moves down its candidate widths one unit at
  a time). A channel's magnitude is the L1 norm of every filter producing it (group-aggregated,
  as :func:`~tas.baselines.magnitude.l1_channel_scores`), divided by the number of weights summed,
  so groups of different fan-in compare per weight as the paper's global magnitude pruning does;
* **regeneration** is per group, so every width stays the candidate pruning left: the
  ``⌈r_t · live⌉`` live channels of lowest magnitude are zeroed and as many zeroed channels (the
  just-zeroed included) of largest gradient magnitude revived, ``r_t = ½ r_0 (1 + cos(π t / T))``
  with ``r_0 = regrowth`` (0.5, the paper's default). A zeroed channel's gradient is identically
  zero in the masked network (its output is zero, and the ReLU after it passes no gradient at
  zero), so it is read where it is defined: with every gate open, the gradient of the loss with
  respect to the channel's producer filters, at the weights a revived channel returns with (a
  masked channel keeps its weights, which only the optimizer's momentum and weight decay move while
  it is masked; the paper grows weights back at zero, which for a whole channel behind a BN would
  leave it dead). With every gate open that gradient is the dense network's, so it does not depend
  on which other channels are masked: an approximation of the paper's gradient in the sparse network.

The final masks give the widths *and* the kept channels; the cost lands within one candidate step
of one group below the target, as for the other baselines.

Measured (docs/benchmarks_plasticity.md, cifar_resnet20 on Fashion-MNIST): the per-weight
magnitude ranks the wide, high-fan-in last stage lowest, so it ends at its narrowest candidate and
the slim network keeps far fewer parameters than the other methods at the same FLOPs (0.18 of
them at 50 % FLOPs, 0.10 at 30 %), the same bias global magnitude pruning has by weight.
"""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import TasError
from ..nas.supernet import Supernet
from ..prune.arch import Arch
from ..prune.graph import ModelGraph
from ..train import engine
from .base import register_baseline
from .magnitude import l1_channel_scores, producers
from .shrink import WidthState, expand_local

__all__ = ["cubic_sparsity", "regeneration_rate", "update_steps", "ChannelGates", "filter_magnitudes",
           "revival_gradients", "regenerate"]


def cubic_sparsity(step: float, final: float, end: float, start: float = 0.0, initial: float = 0.0) -> float:
    """The gradual pruning schedule: ``s_f + (s_i − s_f)(1 − (t − t0)/(t_end − t0))³`` at ``t = step``,
    ``s_i`` before ``start`` and ``s_f`` from ``end`` on."""
    if step <= start:
        return float(initial)
    if step >= end:
        return float(final)
    return float(final + (initial - final) * (1.0 - (step - start) / (end - start)) ** 3)


def regeneration_rate(step: float, total: float, initial: float = 0.5) -> float:
    """The fraction of live channels regenerated at ``step`` of ``total``: ``½ r_0 (1 + cos(π t / T))``."""
    return 0.5 * initial * (1.0 + math.cos(math.pi * min(step, total) / total))


def update_steps(total: int, prune_steps: int, prune_until: float) -> tuple[int, int]:
    """``(Δt, t_end)``: mask updates every ``Δt`` optimizer steps, the sparsity reaching ``s_f`` at
    ``t_end = n·Δt`` (``n = prune_steps``, ``t_end <= prune_until · total`` when the run is long enough)."""
    dt = max(1, int(prune_until * total) // prune_steps)
    return dt, dt * prune_steps


class ChannelGates:
    """0/1 masks on ``model``'s channel groups, as forward hooks on every conv and BN producing them.

    ``keep[n]`` (bool, one per channel of group ``n``) multiplies the outputs; inside :meth:`opened`
    every gate passes everything (the dense network). :meth:`remove` takes the hooks off.
    """

    def __init__(self, model: nn.Module, graph: ModelGraph) -> None:
        device = next(model.parameters()).device
        self.keep = {n: torch.ones(g.channels, dtype=torch.bool) for n, g in graph.groups.items()}
        self._gate = {n: torch.ones(g.channels, device=device) for n, g in graph.groups.items()}
        self._open = False
        self._handles = [model.get_submodule(l.name).register_forward_hook(self._hook(l.out_group))
                         for l in graph.layers if l.kind in ("conv", "bn") and l.out_group is not None]

    def _hook(self, group: str):
        def gate(_module: nn.Module, _inputs: Any, y: torch.Tensor) -> torch.Tensor | None:
            if self._open:
                return None
            return y * self._gate[group].view(1, -1, *[1] * (y.dim() - 2)).to(y.dtype)
        return gate

    def set(self, keep: Mapping[str, torch.Tensor]) -> None:
        """Take these masks (every group's, or some)."""
        for n, k in keep.items():
            self.keep[n] = k.clone()
            self._gate[n].copy_(k.to(self._gate[n]))

    @contextlib.contextmanager
    def opened(self) -> Iterator[None]:
        self._open = True
        try:
            yield
        finally:
            self._open = False

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def filter_magnitudes(model: nn.Module, graph: ModelGraph) -> dict[str, torch.Tensor]:
    """Per group and channel: the mean ``|w|`` over every filter producing it (the group-aggregated
    filter L1 norm divided by the number of weights in those filters), comparable across groups."""
    scores = l1_channel_scores(model, graph)
    for n in scores:
        count = sum(model.get_submodule(name).weight[0].numel() for name in producers(graph, n))
        scores[n] /= max(count, 1)
    return scores


def revival_gradients(model: nn.Module, graph: ModelGraph, gates: ChannelGates, images: torch.Tensor,
                      targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per group and channel: ``Σ |∂L/∂W|`` over the filters producing it, every gate open (module docstring).

    ``L`` is the cross-entropy of ``model`` (in its current mode) on the batch. The BN running
    statistics are left as they were, and no ``.grad`` is touched.
    """
    names = {n: producers(graph, n) for n in graph.groups}
    convs = sorted({name for ps in names.values() for name in ps})
    weights = [model.get_submodule(name).weight for name in convs]
    saved = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}
    with gates.opened():
        loss = F.cross_entropy(model(images), targets)
    grads = dict(zip(convs, torch.autograd.grad(loss, weights)))
    model.load_state_dict(saved, strict=False)
    out = {}
    for n, g in graph.groups.items():
        s = torch.zeros(g.channels, dtype=torch.float64)
        for name in names[n]:
            s += grads[name].abs().flatten(1).sum(1).double().cpu()
        out[n] = s
    return out


def regenerate(keep: torch.Tensor, magnitude: torch.Tensor, gradient: torch.Tensor, rate: float,
               conv_groups: int = 1) -> torch.Tensor:
    """One group's zero-cost neuroregeneration: the new mask, with as many channels as ``keep``.

    The ``⌈rate · live⌉`` live local positions of lowest ``magnitude`` (ties: higher index first)
    are zeroed, then as many zeroed positions, the just-zeroed included, of largest ``gradient``
    (ties: lower index first) revived. A conv-grouped group moves the same local positions in every
    conv group (scores summed over them).
    """
    cg, per = conv_groups, keep.numel() // conv_groups
    alive = keep.view(cg, per)[0].numpy().copy()
    live = np.flatnonzero(alive)
    m = math.ceil(rate * live.size)
    if m == 0 or live.size == per:  # nothing zeroed: the dropped ones would be the only candidates
        return keep.clone()
    mag = magnitude.double().view(cg, per).sum(0).numpy()
    grad = gradient.double().view(cg, per).sum(0).numpy()
    dropped = live[np.lexsort((-live, mag[live]))][:m]
    alive[dropped] = False
    zeroed = np.flatnonzero(~alive)
    alive[zeroed[np.lexsort((zeroed, -grad[zeroed]))][:m]] = True
    out = torch.zeros_like(keep)
    out[expand_local(np.flatnonzero(alive).tolist(), keep.numel(), cg)] = True
    return out


class _Finetune:
    """The teacher's masked fine-tune: SGD (Nesterov, cosine), a mask update every ``Δt`` steps."""

    def __init__(self, supernet: Supernet, model: nn.Module, metric: str, ratio: float, loader: Any,
                 epochs: int, lr: float, momentum: float, weight_decay: float, device: Any, prune_steps: int,
                 prune_until: float, regrowth: float) -> None:
        self.supernet, self.ratio, self.loader, self.epochs, self.lr = supernet, ratio, loader, epochs, lr
        self.regrowth, self.device = regrowth, torch.device(device)
        self.net = copy.deepcopy(model).to(self.device).train()
        self.gates = ChannelGates(self.net, supernet.graph)
        self.state = WidthState(supernet, metric)
        self.total = epochs * len(loader)
        self.dt, self.end = update_steps(self.total, prune_steps, prune_until)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=lr, momentum=momentum, nesterov=True,
                                         weight_decay=weight_decay)
        self.batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self.history: list[dict[str, Any]] = []
        self._ce = engine.cross_entropy_loss()

    def loss(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor):
        self.batch = (images, targets)  # the batch the next mask update reads its gradients on
        return self._ce(model, images, targets)

    def on_step(self, _step_in_epoch: int, updates: int, _loss_sum: float, _count: int) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = 0.5 * self.lr * (1.0 + math.cos(math.pi * updates / self.total))
        if updates % self.dt == 0:
            self.update(updates)

    def update(self, step: int, final: bool = False) -> None:
        """Prune to the schedule's sparsity at ``step``, then regenerate (module docstring); ``final``:
        prune to the target itself, without regeneration."""
        graph, full = self.supernet.graph, self.supernet.full[self.state.metric]
        sparsity = 1.0 - self.ratio if final else cubic_sparsity(step, 1.0 - self.ratio, self.end)
        magnitudes = filter_magnitudes(self.net, graph)
        self.state.shrink_to(full * (1.0 - sparsity), magnitudes)
        rate = 0.0 if final else regeneration_rate(step, self.total, self.regrowth)
        revived = 0
        if rate > 0 and self.batch is not None:
            grads = revival_gradients(self.net, graph, self.gates, *self.batch)
            for n, g in graph.groups.items():
                before = self.state.kept[n]
                self.state.kept[n] = regenerate(before, magnitudes[n], grads[n], rate, g.conv_groups)
                revived += int((self.state.kept[n] & ~before).sum())
        self.gates.set(self.state.kept)
        self.history.append({"step": step, "sparsity": round(sparsity, 6), "ratio": round(self.state.ratio, 6),
                             "regrowth": round(rate, 6), "revived": revived, "final": final})
        print(f"plasticity: step {step}/{self.total}, sparsity target {sparsity:.3f}, "
              f"{self.state.metric} ratio {self.state.ratio:.3f}, regeneration rate {rate:.3f}, "
              f"{revived} channels revived", flush=True)

    def run(self) -> None:
        updates = 0
        for epoch in range(self.epochs):
            _, updates = engine.train_one_epoch(self.net, self.loader, self.optimizer, loss_fn=self.loss,
                                                device=self.device, epoch=epoch, num_updates=updates,
                                                progress=False, on_step=self.on_step)
        if self.end > self.total:  # a run shorter than the schedule: prune to the target at its end
            self.update(self.total, final=True)
        self.gates.remove()


@register_baseline("plasticity", trains=True)
def plasticity(supernet: Supernet, model: nn.Module, metric: str, ratio: float, seed: int,
               train_loader: Any = None, epochs: int = 1, lr: float = 0.05, momentum: float = 0.9,
               weight_decay: float = 5e-4, device: Any = "cpu", prune_steps: int = 10, prune_until: float = 0.75,
               regrowth: float = 0.5, **_: Any) -> Arch:
    """GraNet's gradual pruning with neuroregeneration, by channel, during a fine-tune of ``model``
    on ``train_loader`` for ``epochs`` (module docstring); ``model`` is not modified."""
    if train_loader is None:
        raise TasError("the plasticity baseline fine-tunes the teacher: it needs training data (train_loader)")
    if not isinstance(epochs, int) or epochs < 1 or not isinstance(prune_steps, int) or prune_steps < 1:
        raise TasError(f"plasticity: epochs and prune_steps must be positive integers, got {epochs!r}, {prune_steps!r}")
    if not 0 < prune_until <= 1 or not 0 <= regrowth <= 1:
        raise TasError(f"plasticity: need 0 < prune_until <= 1 and 0 <= regrowth <= 1, got {prune_until}, {regrowth}")
    run = _Finetune(supernet, model, metric, ratio, train_loader, epochs, lr, momentum, weight_decay, device,
                    prune_steps, prune_until, regrowth)
    run.run()
    return supernet.make_arch(run.state.widths, run.state.depths, indices=run.state.indices(), method="plasticity",
                              meta={"epochs": epochs, "steps": run.total, "update_every": run.dt,
                                    "schedule_end": run.end, "prune_steps": prune_steps, "prune_until": prune_until,
                                    "regrowth": regrowth, "updates": run.history,
                                    "revived": sum(h["revived"] for h in run.history)})
