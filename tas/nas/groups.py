"""The state of one channel group during a search (:class:`GroupState`): its candidate widths, width
logits α, channel ranking (or SA++ attention) and the selection the search wrappers read."""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from ..prune.graph import Group
from .attention import block_size_for, constrained_attention
from .sampling import gumbel_topk

__all__ = ["GroupState", "SELECTIONS"]

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
            :class:`~tas.nas.attention.SappController` anneals it to 0 (attention 1) over the last phase.
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
