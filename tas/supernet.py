"""The TAS supernet: a timm backbone whose widths and depths are distributions.

:func:`create_supernet` wraps a trained network (normally the teacher). Its family adapter says
which channel groups and stages exist; the search space gives their candidates; every prunable
module is replaced by a searchable one from :mod:`tas.ops` that reads its groups' current
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

from .arch import Arch
from .attention import block_size_for, constrained_attention
from .cost import build_cost_model
from .errors import TasError
from .families import describe_model
from .graph import Group, ModelGraph
from .ops import SearchBN, SearchConv, SearchLinear, SearchStage
from .sampling import gumbel_softmax, gumbel_topk
from .space import SearchSpace, default_space_for, load_space

__all__ = ["GroupState", "Supernet", "create_supernet", "model_identity", "SELECTIONS"]

#: how a group's kept channels are chosen: TAS's first-c channels, or SA++ block attention
SELECTIONS = ("prefix", "sapp")


class GroupState(nn.Module):
    """A channel group's width logits α, channel ranking, and current selection.

    Attributes:
        widths: candidate widths, ascending (the last is the full width).
        alpha: width logits (None when the group has a single candidate).
        order: channel ranking; candidate ``j`` keeps ``sorted(order[:widths[j]])``. Prefix
            selection keeps the canonical order; SA++ ranks blocks by attention.
        attn_logits: SA++ block-attention logits (None under prefix selection).
        mask: SA++ block mask (True = kept), fixed during sparse phases.
        attn_strength: how much of the SA++ attention applies (a 0-dim buffer): 1, unless
            :class:`~tas.attention.SappController` anneals it to 0 (attention 1) over the last phase.
        active: channels the network currently computes (ascending channel ids).
        fragments: in search mode, ``(candidate, positions, channels, weight)`` per sampled
            candidate: its channels' positions within ``active`` and their channel ids (None for
            all, an int ``n`` for the first n, else an index tensor).
        hard_candidate: in hard mode, the candidate whose BN to use (None: a width outside them).
    """

    def __init__(self, group: Group, widths: Sequence[int], selection: str = "prefix", block_size: int = 8,
                 ) -> None:
        super().__init__()
        self.name, self.channels, self.conv_groups = group.name, group.channels, group.conv_groups
        self.widths = list(widths)
        self.register_buffer("order", group.canonical_order())
        self.alpha = nn.Parameter(1e-2 * torch.randn(len(widths))) if len(widths) > 1 else None
        self.selection = selection if len(widths) > 1 else "prefix"
        self.attn_logits: nn.Parameter | None = None
        if self.selection == "sapp":
            self.block_size = block_size_for(self.channels, self.widths, self.conv_groups, block_size)
            n = self.channels // self.block_size
            self.attn_logits = nn.Parameter(torch.zeros(n))
            self.register_buffer("mask", torch.ones(n, dtype=torch.bool))
            # channel -> block: plain groups cut consecutive channels, grouped ones a local position
            per = self.channels // self.conv_groups
            ch = torch.arange(self.channels)
            self.register_buffer("block_of", (ch % per) if self.conv_groups > 1 else ch // self.block_size)
            self.density = self.widths[0] / self.channels
            self.register_buffer("attn_strength", torch.ones(()))
        self._scale: torch.Tensor | None = None  # this search-mode forward's scale(), see sample()
        self._hard_scale: tuple[tuple[Any, ...], torch.Tensor] | None = None  # see scale_at()
        self._cache: dict[int, torch.Tensor] = {}
        self.temperature = 1.0
        self._prefix: dict[int, bool] = {}  # candidate j's channels are 0..n-1 (filled with _cache)
        self.active: torch.Tensor = torch.arange(self.channels)
        self.fragments: list[tuple[int, Any, Any, Any]] | None = None
        self.hard_candidate: int | None = len(widths) - 1

    # -- ranking ----------------------------------------------------------------------------
    def candidate_indices(self, j: int) -> torch.Tensor:
        idx = self._cache.get(j)
        if idx is None or idx.device != self.order.device:
            idx = self._cache[j] = self.order[: self.widths[j]].sort().values
            # Sorted and distinct, so the last id is n-1 iff they are 0..n-1; read once per ranking
            # here rather than (a host sync) per candidate per forward in sample().
            self._prefix[j] = idx.numel() > 0 and int(idx[-1]) == idx.numel() - 1
        return idx

    def candidate_is_prefix(self, j: int) -> bool:
        """Whether candidate ``j``'s channels are ``0..n-1`` (also the first n of any wider set)."""
        self.candidate_indices(j)
        return self._prefix[j]

    def set_order(self, order: torch.Tensor) -> None:
        """Change the channel ranking."""
        self.order.copy_(order)
        self._cache.clear()
        self._prefix.clear()

    def attention(self) -> torch.Tensor:
        """SA++ block attention: ``n·softmax(L)`` with mean 1, clipped to [density, 1/density]."""
        return constrained_attention(self.attn_logits, self.density, 1 / self.density)

    def block_ranking(self) -> torch.Tensor:
        """Blocks by descending attention, masked-out blocks last."""
        with torch.no_grad():
            a = self.attention()
            key = torch.where(self.mask, a, a - 1e6)
            return torch.argsort(key, descending=True, stable=True)

    def rank_by_attention(self) -> None:
        """Set ``order`` from the attention ranking (a candidate keeps its top blocks)."""
        blocks = self.block_ranking()
        per_block = torch.argsort(self.block_of, stable=True).view(-1, self.block_size)
        # for grouped groups each block is one local position in every conv group
        self.set_order(per_block[blocks].reshape(-1))

    def prune_lowest(self, n_pruned: int) -> None:
        """Mask the ``n_pruned`` lowest-attention blocks (the rest kept)."""
        with torch.no_grad():
            ranking = torch.argsort(self.attention(), descending=True, stable=True)
            self.mask.fill_(True)
            if n_pruned > 0:
                self.mask[ranking[-n_pruned:]] = False
        self.rank_by_attention()

    def scale(self) -> torch.Tensor | None:
        """Every channel's SA++ multiplier, by channel id (None under prefix selection).

        ``(1 + strength·(A − 1)) × mask`` of its block: the attention A while ``attn_strength`` is 1,
        1 when it is 0; masked blocks get 0. Strictly positive on unmasked blocks (A is clipped to
        ``[density, 1/density]``), which is what lets it commute with a ReLU.
        """
        if self.attn_logits is None:
            return None
        a = self.attention()
        strength = float(self.attn_strength)
        if strength != 1.0:
            a = 1 + strength * (a - 1)
        return (a * self.mask).index_select(0, self.block_of)

    def scale_at(self, channels: Any) -> torch.Tensor | None:
        """:meth:`scale` at ``channels`` (None: all, an int ``n``: the first n, else channel ids).

        In search mode the scale :meth:`sample` computed for this forward pass; in hard mode the
        current :meth:`scale` too, so that hard mode, search mode and the materialised network apply
        the same multiplier. Hard mode computes it once per state of the tensors it depends on (their
        in-place version counters change on an optimiser step, ``load_state_dict`` or a mask edit),
        not in every layer of every forward; a forward that records gradients for the logits
        computes it afresh so that they flow.
        """
        if self.attn_logits is None:
            return None
        if self.fragments is not None and self._scale is not None:
            s = self._scale
        elif torch.is_grad_enabled() and self.attn_logits.requires_grad:
            s = self.scale()
        else:
            key = (self.attn_logits._version, self.mask._version, self.attn_strength._version,
                   self.attn_logits.data_ptr(), self.attn_logits.device)
            if self._hard_scale is None or self._hard_scale[0] != key:
                with torch.no_grad():
                    self._hard_scale = (key, self.scale())
            s = self._hard_scale[1]
        if channels is None:
            return s
        return s[:channels] if isinstance(channels, int) else s.index_select(0, channels)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # States written before attn_strength existed applied the full attention.
        if self.attn_logits is not None:
            state_dict.setdefault(prefix + "attn_strength", torch.ones(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._cache.clear()  # a loaded ranking replaces `order` behind the candidate index cache
        self._prefix.clear()
        self._hard_scale = None

    # -- selection --------------------------------------------------------------------------
    def probs(self) -> torch.Tensor:
        """``softmax(α / temperature)``; the temperature is 1 except inside :meth:`Supernet.sharpened`."""
        if self.alpha is None:
            return torch.ones(1, device=self.order.device)
        return torch.softmax(self.alpha / self.temperature, dim=-1)

    def sample(self, tau: float, k: int, generator: torch.Generator | None = None) -> None:
        # one attention computation per forward pass, shared by every layer writing the group
        self._scale = self.scale()
        if self.alpha is None:
            self.active, self.fragments = self.candidate_indices(0), [(0, None, None, None)]
            return
        index, weights = gumbel_topk(self.alpha, tau, k, generator)
        chosen = index.tolist()
        jmax = max(chosen)  # widths ascend, so the largest index is the widest
        self.active = self.candidate_indices(jmax)
        full = self.active.numel() == self.channels
        frags = []
        for j, w in zip(chosen, weights):
            cand = self.candidate_indices(j)
            # Channels 0..n-1 (sorted, distinct: the last is n-1) are also the first n active ones.
            # Asked of each candidate, not of the active set: under a ranking (SA++, grouped
            # convs) a narrower candidate need not be a prefix when the widest one is.
            prefix = self.candidate_is_prefix(j)
            if j == jmax:
                pos, chans = None, (None if full else (cand.numel() if prefix else cand))
            elif prefix:
                pos = chans = cand.numel()
            else:
                pos, chans = torch.searchsorted(self.active, cand), cand
            frags.append((j, pos, chans, w))
        self.fragments = frags

    def set_hard(self, indices: torch.Tensor) -> None:
        self.active = indices.to(self.order.device)
        self.fragments, self._scale, self._hard_scale = None, None, None
        w = indices.numel()
        self.hard_candidate = self.widths.index(w) if w in self.widths else None

    def extra_repr(self) -> str:
        return f"{self.name}: widths={self.widths}, selection={self.selection}"


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
            beta = self.betas[_key(name)] if _key(name) in self.betas else None
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

    def derive_arch(self, **meta: Any) -> Arch:
        """The argmax architecture of the current width and depth logits."""
        widths = {n: g.widths[int(g.probs().argmax())] for n, g in self.groups().items()}
        depths = {n: self.stage_depths[n][int(self.depth_probs(n).argmax())] for n in self.graph.stages}
        return self.make_arch(widths, depths, meta=meta)

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
    def depth_probs(self, stage: str) -> torch.Tensor:
        key = _key(stage)
        if key not in self.betas:
            return torch.ones(1, device=next(self.parameters()).device)
        return torch.softmax(self.betas[key] / self.temperature, dim=-1)

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
        """Differentiable expected FLOPs or params under softmax(α) and softmax(β)."""
        wp = {n: (g.probs().cpu(), torch.tensor(g.widths, dtype=torch.float32)) for n, g in self.groups().items()}
        dp = {n: (self.depth_probs(n).cpu(), torch.tensor(self.stage_depths[n])) for n in self.graph.stages}
        return self.cost.expected(metric, wp, dp)

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
            attention ranks channel blocks; see :mod:`tas.attention`).
        block_size: SA++ channels per block (default: the space's divisor).
    """
    graph = describe_model(model)
    name, kwargs, size = model_identity(model)
    model_name = model_name or name
    space = load_space(space) if space is not None else default_space_for(model_name, graph)
    return Supernet(model, space, graph, input_size or size, model_name, {**kwargs, **(model_kwargs or {})},
                    selection=selection, block_size=block_size)
