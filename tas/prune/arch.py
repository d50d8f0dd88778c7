"""The architecture spec: what every selection method produces and everything downstream consumes.

An :class:`Arch` names its source model (timm name + kwargs + input size), every channel group's kept
width and kept channel indices, every stage's kept depth, and its exact FLOPs (multiply-accumulates)
and params next to the full model's. It is plain JSON, versioned; :meth:`Arch.from_json` validates
types and ranges and refuses specs from a newer version.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io.checkpoint import atomic_write_json
from ..errors import ArchError

if TYPE_CHECKING:  # pragma: no cover
    from .graph import ModelGraph

__all__ = ["Arch", "ARCH_VERSION"]

ARCH_VERSION = 1


@dataclass
class Arch:
    """A concrete architecture in a search space.

    Attributes:
        model: timm model name of the source (unpruned) network.
        model_kwargs: kwargs it was created with (num_classes, in_chans, ...).
        input_size: ``[C, H, W]`` the costs were computed at.
        groups: per group ``{"channels": full width, "width": kept width, "indices": kept channels}``.
        stages: per stage ``{"blocks": full depth, "depth": kept depth}``.
        flops, params: exact cost of this architecture.
        full_flops, full_params: cost of the source network.
        method: what produced it (``tas``, ``uniform``, ...).
        meta: free-form provenance (search settings, epoch, ...).
    """

    model: str
    model_kwargs: dict[str, Any]
    input_size: list[int]
    groups: dict[str, dict[str, Any]]
    stages: dict[str, dict[str, int]]
    flops: int
    params: int
    full_flops: int
    full_params: int
    method: str = "tas"
    meta: dict[str, Any] = field(default_factory=dict)
    version: int = ARCH_VERSION

    @property
    def widths(self) -> dict[str, int]:
        return {n: g["width"] for n, g in self.groups.items()}

    @property
    def depths(self) -> dict[str, int]:
        return {n: s["depth"] for n, s in self.stages.items()}

    @property
    def flops_ratio(self) -> float:
        return self.flops / self.full_flops

    @property
    def params_ratio(self) -> float:
        return self.params / self.full_params

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        """The JSON text; also written atomically to ``path`` when given."""
        d = self.to_dict()
        if path is not None:
            atomic_write_json(path, d)
        return json.dumps(d, indent=2)

    @classmethod
    def from_dict(cls, d: Any, source: str = "arch") -> "Arch":
        """Validate and build; every problem is an :class:`ArchError` naming the field."""
        if not isinstance(d, dict):
            raise ArchError(f"{source}: expected a JSON object")
        version = d.get("version", None)
        if not isinstance(version, int):
            raise ArchError(f"{source}: missing or non-integer 'version'")
        if version > ARCH_VERSION:
            raise ArchError(f"{source}: spec version {version} is newer than this tas understands ({ARCH_VERSION}); upgrade tas")
        types = {"model": str, "model_kwargs": dict, "input_size": list, "groups": dict, "stages": dict,
                 "flops": int, "params": int, "full_flops": int, "full_params": int}
        for key, typ in types.items():
            if key not in d:
                raise ArchError(f"{source}: missing field '{key}'")
            if not isinstance(d[key], typ) or (typ is int and isinstance(d[key], bool)):
                raise ArchError(f"{source}: field '{key}' must be {typ.__name__}, got {type(d[key]).__name__}")
        for name, g in d["groups"].items():
            if not isinstance(g, dict) or not all(isinstance(g.get(k), int) for k in ("channels", "width")) \
                    or not isinstance(g.get("indices"), list):
                raise ArchError(f"{source}: group '{name}' needs integer 'channels', 'width' and a list 'indices'")
            idx = g["indices"]
            if not 0 < g["width"] <= g["channels"]:
                raise ArchError(f"{source}: group '{name}' width {g['width']} outside 1..{g['channels']}")
            if len(idx) != g["width"] or len(set(idx)) != len(idx) or \
                    any(not isinstance(i, int) or not 0 <= i < g["channels"] for i in idx):
                raise ArchError(f"{source}: group '{name}' indices must be {g['width']} distinct channels in 0..{g['channels'] - 1}")
        for name, s in d["stages"].items():
            if not isinstance(s, dict) or not all(isinstance(s.get(k), int) for k in ("blocks", "depth")) \
                    or not 1 <= s["depth"] <= s["blocks"]:
                raise ArchError(f"{source}: stage '{name}' needs integer 'blocks' and 'depth' with 1 <= depth <= blocks")
        known = set(types) | {"method", "meta", "version"}
        extra = sorted(set(d) - known)
        if extra:
            raise ArchError(f"{source}: unknown fields {extra}")
        return cls(**d)

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> "Arch":
        """Parse JSON text or read a JSON file."""
        source = "arch"
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            path = Path(text_or_path)
            if not path.is_file():
                raise ArchError(f"architecture file not found: {path}")
            source, text = str(path), path.read_text()
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ArchError(f"{source} is not valid JSON: {e}") from None
        return cls.from_dict(d, source)

    def check_fits(self, graph: "ModelGraph", model: str) -> None:
        """Raise :class:`ArchError` unless this spec describes a network of ``graph`` (a ``model``).

        The one check every consumer of a spec runs (the supernet's hard mode, the materialiser):
        the same groups and stages with the same full sizes, and in a group that feeds a grouped
        conv the same count of kept channels at the same local positions in every conv group (in
        one that only comes out of it, the same count), the only selections a dense grouped conv
        can compute. :meth:`from_dict` has already checked
        the spec on its own (types, ranges, distinct indices).
        """
        if set(self.groups) != set(graph.groups) or set(self.stages) != set(graph.stages):
            missing = sorted((set(graph.groups) | set(graph.stages)) - set(self.groups) - set(self.stages))
            extra = sorted((set(self.groups) | set(self.stages)) - set(graph.groups) - set(graph.stages))
            raise ArchError(f"the architecture (of {self.model}) does not fit this {model}: its groups or stages "
                            f"differ (missing {missing[:3]}, unknown {extra[:3]})")
        # A conv reading group X and writing a conv-grouped group is the grouped conv itself, so X
        # feeds it: its conv group q reads only X's slice q, with one weight layout for all q.
        feeds = {l.in_group for l in graph.layers if l.kind == "conv" and l.in_group and l.out_group
                 and graph.groups[l.out_group].conv_groups > 1}
        for name, g in graph.groups.items():
            a = self.groups[name]
            if a["channels"] != g.channels:
                raise ArchError(f"the architecture's group {name} has {a['channels']} channels, the model's "
                                f"has {g.channels}")
            if g.conv_groups > 1:
                _check_conv_grouped(name, a["indices"], g.channels, g.conv_groups, name in feeds)
        for name, s in graph.stages.items():
            if self.stages[name]["blocks"] != s.num_blocks:
                raise ArchError(f"the architecture's stage {name} has {self.stages[name]['blocks']} blocks, the "
                                f"model's has {s.num_blocks}")

    def summary_rows(self) -> list[list[str]]:
        """Rows ``[name, original, kept]`` for every group and stage, for a printed table."""
        rows = [[n, str(g["channels"]), str(g["width"])] for n, g in self.groups.items()]
        rows += [[f"{n} (depth)", str(s["blocks"]), str(s["depth"])] for n, s in self.stages.items()]
        return rows


def _check_conv_grouped(name: str, indices: list[int], channels: int, conv_groups: int, feeds: bool) -> None:
    """Every conv group of ``name`` must keep as many channels, and when ``name`` feeds the grouped
    conv (rather than only coming out of it) the same local positions: the slim conv's groups share
    one weight layout on the input side, while each output channel has its own filter."""
    per = channels // conv_groups
    local: list[set[int]] = [set() for _ in range(conv_groups)]
    for i in indices:
        local[i // per].add(i % per)
    for q, positions in enumerate(local):
        if positions != local[0] and (feeds or len(positions) != len(local[0])):
            role = "feeds" if feeds else "comes out of"
            rule = "the same local channels" if feeds else "as many channels"
            raise ArchError(
                f"group {name} {role} a conv with {conv_groups} groups of {per} channels: every conv group must keep "
                f"{rule}, but conv group 0 keeps {_fmt(local[0])} and conv group {q} keeps "
                f"{_fmt(positions)} (channel c is local position c % {per} of conv group c // {per})")


def _fmt(positions: set[int], n: int = 8) -> str:
    items = sorted(positions)
    return str(items) if len(items) <= n else f"[{', '.join(map(str, items[:n]))}, ...] ({len(items)})"
