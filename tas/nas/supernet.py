"""The TAS supernet: a timm backbone whose widths and depths are distributions.

:func:`create_supernet` wraps a trained network (normally the teacher). Its family adapter says
which channel groups and stages exist; the search space gives their candidates; every prunable
module is replaced by a searchable one from :mod:`tas.nas.ops` that reads its groups' current
selection, so the backbone's own forward code runs unchanged.

Modes:

* ``search`` — every forward samples K width candidates per group (Gumbel, without replacement)
  and a Gumbel mixture over each stage's depths (TAS).
* ``hard`` — :meth:`Supernet.set_arch` fixes one architecture; the output equals the materialised
  slim network's.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn as nn

from ..prune.arch import Arch
from .cost import build_cost_model
from ..errors import TasError
from ..prune.families import describe_model
from ..prune.graph import ModelGraph
from ..prune.materialize import copy_unsliced
from .groups import SELECTIONS, GroupState
from .ops import SearchBN, SearchConv, SearchLinear, SearchStage
from .sampling import gumbel_softmax
from .space import SearchSpace, default_space_for, load_space

__all__ = ["Supernet", "create_supernet", "model_identity"]

def _key(name: str) -> str:
    return name.replace(".", "__")


def model_identity(model: nn.Module) -> tuple[str, dict[str, Any], list[int]]:
    """``(timm name, kwargs, input size)`` of a model created by timm, as far as it can tell."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("architecture") or type(model).__name__
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    kwargs = {"num_classes": int(getattr(model, "num_classes", 0)), "in_chans": first_conv.in_channels}
    size = list(cfg.get("input_size", (first_conv.in_channels, 224, 224)))
    size[0] = first_conv.in_channels
    return name, kwargs, size


class Supernet(nn.Module):
    """See the module docstring. Build with :func:`create_supernet`."""

    def __init__(self, model: nn.Module, space: SearchSpace, graph: ModelGraph, input_size: Sequence[int],
                 model_name: str, model_kwargs: Mapping[str, Any], selection: str = "prefix",
                 block_size: int | None = None) -> None:
        super().__init__()
        if selection not in SELECTIONS:
            raise TasError(f"unknown channel selection {selection!r} (one of {', '.join(SELECTIONS)})")
        self.selection = selection
        self.space, self.graph = space, graph
        self.input_size = list(input_size)
        self.model_name, self.model_kwargs = model_name, dict(model_kwargs)
        width_cands, depth_cands = space.candidates(graph)
        object.__setattr__(self, "template", copy.deepcopy(model).cpu())  # unregistered: the original structure
        self.cost = build_cost_model(model, graph, input_size)
        self.full = {m: self.cost.exact(m, {n: g.channels for n, g in graph.groups.items()},
                                        {n: s.num_blocks for n, s in graph.stages.items()}) for m in ("flops", "params")}

        net = copy.deepcopy(model)
        block = block_size or space.step
        self.group_states = nn.ModuleDict({_key(n): GroupState(g, width_cands[n], selection, block)
                                           for n, g in graph.groups.items()})
        gs = {n: self.group_states[_key(n)] for n in graph.groups}
        normed = {l.out_group for l in graph.layers if l.kind == "bn"}
        for layer in graph.layers:
            m = net.get_submodule(layer.name)
            ig, og = gs.get(layer.in_group), gs.get(layer.out_group)
            if layer.kind == "conv":
                net.set_submodule(layer.name, SearchConv(m, ig, og, mix=layer.out_group not in normed))
            elif layer.kind == "bn" and og is not None:
                net.set_submodule(layer.name, SearchBN(m, og))
            elif layer.kind == "linear":
                net.set_submodule(layer.name, SearchLinear(m, ig))
        self.stage_depths = depth_cands
        self.betas = nn.ParameterDict()
        for name in graph.stages:
            net.set_submodule(name, SearchStage(net.get_submodule(name), name, depth_cands[name]))
            if len(depth_cands[name]) > 1:
                self.betas[_key(name)] = nn.Parameter(1e-2 * torch.randn(len(depth_cands[name])))
        self.model = net
        self.tau = 5.0
        self.k = space.k
        self.generator: torch.Generator | None = None
        self.mode = "search"
        self.temperature = 1.0
        self._cost_tables: dict[str, Any] = {}  # metric -> ExpectedCostTable, see expected_cost()
        self._width_rows = self._rows([len(g.widths) if g.alpha is not None else None for g in self.groups().values()])
        self._depth_rows = self._rows([len(depth_cands[n]) if _key(n) in self.betas else None for n in graph.stages])

    # -- parameters -------------------------------------------------------------------------
    def groups(self) -> dict[str, GroupState]:
        return {n: self.group_states[_key(n)] for n in self.graph.groups}

    def stages(self) -> dict[str, SearchStage]:
        return {n: self.model.get_submodule(n) for n in self.graph.stages}

    def arch_parameters(self) -> Iterator[nn.Parameter]:
        """Width logits α of every searched group and depth logits β of every searched stage."""
        for g in self.group_states.values():
            if g.alpha is not None:
                yield g.alpha
        yield from self.betas.values()

    def attention_parameters(self) -> Iterator[nn.Parameter]:
        """SA++ block-attention logits (empty under prefix selection)."""
        for g in self.group_states.values():
            if g.attn_logits is not None:
                yield g.attn_logits

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        """Everything the weight step trains (shared conv weights, per-candidate BNs, classifier)."""
        other = {id(p) for p in self.arch_parameters()} | {id(p) for p in self.attention_parameters()}
        return (p for p in self.parameters() if id(p) not in other)

    # -- modes ------------------------------------------------------------------------------
    def sample(self) -> None:
        """Draw this forward pass's fragments and depth mixtures."""
        for g in self.groups().values():
            g.sample(self.tau, self.k, self.generator)
        for name, stage in self.stages().items():
            beta = self.depth_logits(name)
            if beta is None:
                stage.mix, stage.depth = None, None
            else:
                q = gumbel_softmax(beta, self.tau, self.generator)
                stage.mix = dict(zip(stage.depths, q))

    def search(self) -> "Supernet":
        """Switch to search mode."""
        self.mode = "search"
        return self

    def set_arch(self, arch: Arch) -> "Supernet":
        """Switch to hard mode computing exactly ``arch``."""
        self.check_arch(arch)
        device = next(self.parameters()).device
        for n, g in self.groups().items():
            g.set_hard(torch.tensor(sorted(arch.groups[n]["indices"]), dtype=torch.long, device=device))
        for n, stage in self.stages().items():
            stage.mix, stage.depth = None, arch.stages[n]["depth"]
        self.mode = "hard"
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "search":
            self.sample()
        return self.model(x)

    # -- architectures ----------------------------------------------------------------------
    def check_arch(self, arch: Arch) -> None:
        """Raise :class:`ArchError` unless ``arch`` belongs to this supernet's model (:meth:`Arch.check_fits`)."""
        arch.check_fits(self.graph, self.model_name)

    def slim_copy(self, arch: Arch) -> tuple[nn.Module, ModelGraph]:
        """``arch``'s network, not yet finished: a copy of the wrapped model whose wrappers are
        replaced by their dense slices (the search's weights: shared convs, each kept width's own
        BN), everything else copied from the searched network, all stages at full depth; and the
        graph. :func:`tas.prune.materialize.materialize` finishes it (it calls this)."""
        self.check_arch(arch)
        mode = self.mode
        self.set_arch(arch)  # the wrappers now hold exactly arch's selection
        slim = copy.deepcopy(self.template)
        sliced = []
        for layer in self.graph.layers:
            m = self.model.get_submodule(layer.name)
            if isinstance(m, (SearchConv, SearchBN, SearchLinear)):
                slim.set_submodule(layer.name, m.sliced())
                sliced.append(f"{layer.name}.")
        slim.to(next(self.parameters()).device)
        copy_unsliced(self.model, slim, tuple(sliced))
        if mode == "search":
            self.search()
        return slim, self.graph

    def make_arch(self, widths: Mapping[str, int], depths: Mapping[str, int],
                  indices: Mapping[str, Sequence[int]] | None = None, method: str = "tas",
                  meta: Mapping[str, Any] | None = None) -> Arch:
        """An :class:`Arch` with these widths/depths; indices default to each group's ranking prefix."""
        groups = {}
        for n, g in self.groups().items():
            w = int(widths[n])
            if indices is not None and n in indices:
                idx = sorted(int(i) for i in indices[n])
            else:
                idx = g.order[:w].sort().values.tolist()
            groups[n] = {"channels": g.channels, "width": w, "indices": idx}
        stages = {n: {"blocks": s.num_blocks, "depth": int(depths[n])} for n, s in self.graph.stages.items()}
        return Arch(model=self.model_name, model_kwargs=dict(self.model_kwargs), input_size=list(self.input_size),
                    groups=groups, stages=stages,
                    flops=self.cost.exact("flops", widths, depths), params=self.cost.exact("params", widths, depths),
                    full_flops=self.full["flops"], full_params=self.full["params"], method=method,
                    meta={"selection": self.selection, **dict(meta or {})})

    def argmax(self) -> tuple[dict[str, int], dict[str, int]]:
        """``(widths, depths)`` of the current width and depth logits' argmax (cheap: no :class:`Arch`)."""
        widths = {n: g.widths[int(g.probs().argmax())] for n, g in self.groups().items()}
        depths = {n: self.stage_depths[n][int(self.depth_probs(n).argmax())] for n in self.graph.stages}
        return widths, depths

    def derive_arch(self, **meta: Any) -> Arch:
        """The argmax architecture of the current width and depth logits."""
        return self.make_arch(*self.argmax(), meta=meta)

    def random_arch(self, generator: torch.Generator | None = None) -> Arch:
        """An architecture drawn uniformly from the space (for tests and the random baseline)."""
        def pick(options: list[int]) -> int:
            return options[int(torch.randint(len(options), (1,), generator=generator))]
        widths = {n: pick(g.widths) for n, g in self.groups().items()}
        depths = {n: pick(self.stage_depths[n]) for n in self.graph.stages}
        return self.make_arch(widths, depths, method="random")

    def smallest_arch(self) -> Arch:
        return self.make_arch({n: g.widths[0] for n, g in self.groups().items()},
                              {n: d[0] for n, d in self.stage_depths.items()}, method="smallest")

    def full_arch(self) -> Arch:
        return self.make_arch({n: g.channels for n, g in self.graph.groups.items()},
                              {n: s.num_blocks for n, s in self.graph.stages.items()}, method="full")

    # -- cost -------------------------------------------------------------------------------
    def depth_logits(self, stage: str) -> nn.Parameter | None:
        """The depth logits β of ``stage`` (None where its depth is not searched)."""
        return self.betas[_key(stage)] if _key(stage) in self.betas else None

    def depth_probs(self, stage: str) -> torch.Tensor:
        beta = self.depth_logits(stage)
        if beta is None:
            return torch.ones(1, device=next(self.parameters()).device)
        return torch.softmax(beta / self.temperature, dim=-1)

    @contextlib.contextmanager
    def sharpened(self, temperature: float) -> Iterator["Supernet"]:
        """Inside the block every width and depth distribution is ``softmax(logits / temperature)``.

        A cost expected under sharpened distributions approaches the argmax architecture's as the
        temperature falls, yet stays differentiable: what lets a budget controller steer the
        argmax (which decides the final architecture) and not only the mean.
        """
        groups = list(self.groups().values())
        saved = [g.temperature for g in groups], self.temperature
        for g in groups:
            g.temperature = temperature
        self.temperature = temperature
        try:
            yield self
        finally:
            for g, t in zip(groups, saved[0]):
                g.temperature = t
            self.temperature = saved[1]

    def expected_cost(self, metric: str = "flops") -> torch.Tensor:
        """Differentiable expected FLOPs or params under softmax(α) and softmax(β).

        :meth:`CostModel.expected <tas.cost.CostModel.expected>` as a few tensor ops
        (:class:`~tas.cost.ExpectedCostTable`): every group's logits (a single candidate's: 0) are
        gathered into one padded ``(groups, candidates)`` matrix, padding at −∞, and one softmax
        gives all the width distributions; likewise the depths. Computed on the CPU.
        """
        if metric not in self._cost_tables:
            self._cost_tables[metric] = self.cost.table(
                metric, {n: g.widths for n, g in self.groups().items()},
                {n: self.stage_depths[n] for n in self.graph.stages})
        table = self._cost_tables[metric]
        alphas = [g.alpha for g in self.groups().values() if g.alpha is not None]
        betas = [self.betas[_key(n)] for n in self.graph.stages if _key(n) in self.betas]
        return table(self._padded_probs(alphas, self._width_rows), self._padded_probs(betas, self._depth_rows))

    def _padded_probs(self, logits: list[torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        """``softmax(logits / temperature)`` of each row of ``rows``, an index into ``cat(logits) + [0, −∞]``."""
        pad = torch.tensor([0.0, float("-inf")])
        flat = torch.cat([t.cpu() for t in logits] + [pad.to(logits[0].dtype if logits else pad.dtype)])
        return torch.softmax(flat[rows] / self.temperature, dim=-1)

    @staticmethod
    def _rows(sizes: list[int | None]) -> torch.Tensor:
        """Gather rows for :meth:`_padded_probs`: ``sizes[i]`` logits of row i (None: a fixed row)."""
        total = sum(n for n in sizes if n)
        width = max([n or 1 for n in sizes] + [1])
        rows, offset = [], 0
        for n in sizes:
            if n:
                rows.append(list(range(offset, offset + n)) + [total + 1] * (width - n))
                offset += n
            else:  # probability 1 on the only candidate
                rows.append([total] + [total + 1] * (width - 1))
        return torch.tensor(rows, dtype=torch.long).view(len(sizes), width)

    def check_target(self, metric: str, ratio: float) -> None:
        """Refuse a budget below the smallest architecture of the space, naming the reachable minimum."""
        if not 0 < ratio <= 1:
            raise TasError(f"--{metric}-ratio must be in (0, 1], got {ratio}")
        smallest = getattr(self.smallest_arch(), metric) / self.full[metric]
        if ratio < smallest:
            raise TasError(f"{metric} target {ratio:.3f} is unreachable: the smallest architecture in this "
                           f"search space keeps {smallest:.3f} of the {metric}")


def create_supernet(model: nn.Module, space: str | SearchSpace | dict | None = None,
                    input_size: Sequence[int] | None = None, model_name: str | None = None,
                    model_kwargs: Mapping[str, Any] | None = None, selection: str = "prefix",
                    block_size: int | None = None) -> Supernet:
    """Wrap ``model`` (weights are copied, the original is untouched) in a TAS supernet.

    Args:
        model: a network of a supported family (timm ResNet family, cifar_resnet*).
        space: preset name, YAML path, dict or :class:`SearchSpace`; default: the family's preset.
        input_size: ``(C, H, W)`` costs are computed at; default: the model's pretrained_cfg.
        model_name, model_kwargs: how to recreate the model with timm (recorded in every Arch);
            default: read from the model.
        selection: ``prefix`` (TAS: a width keeps the first channels) or ``sapp`` (SA++ block
            attention ranks channel blocks; see :mod:`tas.nas.attention`).
        block_size: SA++ channels per block (default: the space's divisor).
    """
    graph = describe_model(model)
    name, kwargs, size = model_identity(model)
    model_name = model_name or name
    space = load_space(space) if space is not None else default_space_for(model_name, graph)
    return Supernet(model, space, graph, input_size or size, model_name, {**kwargs, **(model_kwargs or {})},
                    selection=selection, block_size=block_size)
