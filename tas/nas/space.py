"""Search spaces: the declarative presets in ``tas/search_spaces/*.yaml`` and the candidates they imply.

A space names the width-candidate ratios, the channel divisor widths are rounded to, K (fragments
per forward), the depth-candidate rule, and which kinds of groups are searched. Applied to a
:class:`~tas.prune.graph.ModelGraph` it yields every group's candidate widths and every stage's candidate
depths.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from ..errors import TasError
from ..prune.graph import Group, ModelGraph, Stage

__all__ = ["SearchSpace", "load_space", "list_spaces", "default_space_for", "SPACES_DIR"]

# The presets ship inside the package (the top-level search_spaces/ of a checkout links here).
SPACES_DIR = Path(__file__).resolve().parents[1] / "search_spaces"
_SEARCH_KEYS = ("stem", "stream", "inner", "depth")
DEPTH_RULES = ("cifar", "imagenet", "every", "none")
#: the rounding multiple ``divisor: auto`` starts from before the latency table thins the widths
AUTO_BASE = 8


@dataclass
class SearchSpace:
    """Width and depth candidates for one model family.

    Attributes:
        family: the family adapter it is meant for (checked against the model).
        ratios: width candidates as fractions of each group's full width, each in (0, 1].
        divisor: widths are rounded to a multiple of this (and of a grouped conv's group count), or
            ``"auto"``: rounded to multiples of 8, then thinned by the measured latency table so
            that no kept width is as slow as a wider one (:func:`tas.deploy.latency.aligned_candidates`;
            the search does this before it builds the supernet).
        widths: explicit candidate widths per group name, overriding ``ratios`` for those groups
            (``divisor: auto`` records its choice here).
        k: fragments sampled per group in every forward pass.
        depth: depth-candidate rule: ``cifar`` (N blocks: 1, 3, 5, …, N; {1, 2, 3} for 3),
            ``imagenet`` (in proportion to the shallowest stage), ``every`` (1, 2, …, N) or ``none``.
        search: which group kinds (``stem``, ``stream``, ``inner``) and whether ``depth`` are searched.
    """

    family: str = "resnet"
    ratios: list[float] = field(default_factory=lambda: [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    divisor: int | str = 8
    k: int = 2
    depth: str = "imagenet"
    search: dict[str, bool] = field(default_factory=lambda: {k: True for k in _SEARCH_KEYS})
    widths: dict[str, list[int]] | None = None
    name: str = "custom"

    def __post_init__(self) -> None:
        if not self.ratios or any(not isinstance(r, (int, float)) or not 0 < r <= 1 for r in self.ratios):
            raise TasError(f"search space {self.name}: every width ratio must be in (0, 1], got {self.ratios}")
        if self.divisor != "auto" and (not isinstance(self.divisor, int) or self.divisor < 1):
            raise TasError(f"search space {self.name}: divisor must be a positive integer or 'auto', "
                           f"got {self.divisor!r}")
        if self.widths is not None and (not isinstance(self.widths, dict) or not all(
                isinstance(v, list) and v and all(isinstance(w, int) and w > 0 for w in v)
                for v in self.widths.values())):
            raise TasError(f"search space {self.name}: 'widths' must map group names to lists of positive "
                           "integers")
        if not isinstance(self.k, int) or self.k < 1:
            raise TasError(f"search space {self.name}: k must be a positive integer, got {self.k!r}")
        if self.depth not in DEPTH_RULES:
            raise TasError(f"search space {self.name}: depth rule {self.depth!r} not in {DEPTH_RULES}")
        unknown = sorted(set(self.search) - set(_SEARCH_KEYS))
        if unknown:
            raise TasError(f"search space {self.name}: unknown keys under 'search': {unknown}")
        self.search = {k: bool(self.search.get(k, True)) for k in _SEARCH_KEYS}

    @property
    def step(self) -> int:
        """The rounding multiple of widths (8 under ``divisor: auto``, before latency alignment)."""
        return AUTO_BASE if self.divisor == "auto" else int(self.divisor)

    def width_candidates(self, group: Group) -> list[int]:
        """Sorted distinct widths of ``group``: each ratio × width rounded to the step, full width included.

        Explicit ``widths`` for the group take precedence (the full width is always a candidate).
        """
        if not self.search.get(group.kind, True):
            return [group.channels]
        if self.widths and group.name in self.widths:
            bad = [w for w in self.widths[group.name] if w > group.channels or w % group.conv_groups]
            if bad:
                raise TasError(f"search space {self.name}: widths {bad} of {group.name} exceed its "
                               f"{group.channels} channels or are not multiples of its {group.conv_groups} groups")
            return sorted(set(self.widths[group.name]) | {group.channels})
        step = math.lcm(self.step, group.conv_groups)
        out = {group.channels}
        for r in self.ratios:
            w = max(step, int(round(r * group.channels / step)) * step)
            if w <= group.channels and w % group.conv_groups == 0:
                out.add(w)
        return sorted(out)

    def depth_candidates(self, stage: Stage, all_stages: list[Stage]) -> list[int]:
        """Sorted candidate block counts of ``stage`` (the first block is always kept)."""
        n = stage.num_blocks
        if not self.search["depth"] or self.depth == "none" or n == 1:
            return [n]
        if self.depth == "every":
            return list(range(1, n + 1))
        if self.depth == "cifar":
            return [1, 2, 3] if n == 3 else sorted(set(range(1, n + 1, 2)) | {n})
        m = min(s.num_blocks for s in all_stages)
        return sorted({max(1, int(n * j / m)) for j in range(1, m + 1)})

    def candidates(self, graph: ModelGraph) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
        """Width candidates per group and depth candidates per stage of ``graph``."""
        if graph.family != self.family:
            raise TasError(f"search space {self.name} is for the {self.family} family, the model is {graph.family}")
        unknown = sorted(set(self.widths or {}) - set(graph.groups))
        if unknown:
            raise TasError(f"search space {self.name}: 'widths' names groups the model does not have: {unknown}")
        stages = list(graph.stages.values())
        return ({n: self.width_candidates(g) for n, g in graph.groups.items()},
                {n: self.depth_candidates(s, stages) for n, s in graph.stages.items()})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def list_spaces() -> list[str]:
    """Names of the presets shipped in ``search_spaces/``."""
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def load_space(space: str | Path | dict | SearchSpace | None) -> SearchSpace:
    """A :class:`SearchSpace` from a preset name, a YAML path, a dict, or an existing space."""
    if isinstance(space, SearchSpace):
        return space
    name = "custom"
    if isinstance(space, (str, Path)):
        path = Path(space)
        if not path.suffix and not path.exists():
            path = SPACES_DIR / f"{space}.yaml"
        if not path.is_file():
            raise TasError(f"search space {space!r} not found: give a YAML path or one of {list_spaces()}")
        try:
            space = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise TasError(f"search space {path} is not valid YAML: {e}") from None
        name = path.stem
    if not isinstance(space, dict):
        raise TasError("a search space must be a mapping")
    known = {f.name for f in fields(SearchSpace)}
    unknown = sorted(set(space) - known)
    if unknown:
        raise TasError(f"search space {name}: unknown keys {unknown} (known: {sorted(known - {'name'})})")
    return SearchSpace(**{"name": name, **space})


def default_space_for(model_name: str | None, graph: ModelGraph) -> SearchSpace:
    """The preset that fits a model: ``cifar_resnet`` for cifar_resnet*, else the family's preset."""
    if model_name and model_name.startswith("cifar_resnet"):
        return load_space("cifar_resnet")
    return load_space(graph.family)
