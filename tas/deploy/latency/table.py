"""The latency table: per-layer latency grids plus the fixed overhead, and the costs read from it
(exact, differentiable expected, per group), saved as JSON (see :mod:`tas.deploy.latency`).
"""
from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ...errors import CheckpointError, TasError
from .micro import MicroSpec
from ...io.checkpoint import atomic_write_json
from ...io.checkpoint import read_json
from ...cli import format_table

#: 2: a TF "same" conv's geometry records the pads it applies (format 1 timed it unpadded);
#: 3: the calibration against whole networks, the spread of every entry and the machine's load
FORMAT_VERSION = 3

#: the two timings a table predicts: ``cold`` (each call right after other models', as the layers
#: are timed) and ``steady`` (each call right after an untimed one of the same model: served back to back)
TIMINGS = ("cold", "steady")


@dataclass
class LayerEntry:
    """One layer's latencies over its width grid.

    ``axes``: the groups indexing ``times``' dimensions (0, 1 or 2; a depthwise conv's one group
    once); ``widths[d]``: the grid of axis ``d``; ``times``: milliseconds, one per grid point (the
    per-call cost already subtracted); ``spread``: how noisy each point's repeats were
    (:func:`tas.deploy.latency.measure.spread`); ``geometry``: the layer's full-width shape.
    """

    name: str
    kind: str
    in_group: str | None
    out_group: str | None
    block: tuple[str, int] | None
    axes: tuple[str, ...]
    widths: list[list[int]]
    times: np.ndarray
    geometry: dict[str, Any] = field(default_factory=dict)
    spread: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.spread is None:
            self.spread = np.zeros_like(np.asarray(self.times, dtype=np.float64))

    def spec(self, point: Mapping[str, int], batch: int) -> MicroSpec:
        """The micro-model at ``point`` (width per axis group)."""
        g = self.geometry
        if self.kind == "linear":
            c_in = point[self.in_group] if self.in_group in point else g["c_in"]
            return MicroSpec("linear", self.name, c_in, g["c_out"], bias=g["bias"], batch=batch)
        if g["depthwise"]:
            c = point[self.axes[0]] if self.axes else g["c_out"]
            c_in = c_out = groups = c
        else:
            c_in = point[self.in_group] if self.in_group in point else g["c_in"]
            c_out = point[self.out_group] if self.out_group in point else g["c_out"]
            groups = g["groups"]
        pad = g["padding"] if isinstance(g["padding"], str) else tuple(g["padding"])
        return MicroSpec("conv", self.name, c_in, c_out, tuple(g["kernel"]), tuple(g["stride"]), pad,
                         tuple(g["dilation"]), groups, g["bias"], g["bn"], tuple(g["in_hw"]), batch)

    def points(self) -> list[tuple[tuple[int, ...], dict[str, int]]]:
        """Every grid point: ``(index tuple, {axis group: width})``."""
        out = []
        for idx in itertools.product(*[range(len(w)) for w in self.widths]):
            out.append((idx, {a: self.widths[d][i] for d, (a, i) in enumerate(zip(self.axes, idx))}))
        return out

    @property
    def full_ms(self) -> float:
        return float(self.times[tuple(len(w) - 1 for w in self.widths)])

    def weight_mb(self) -> np.ndarray:
        """The layer's weights (MB of float32) at every grid point: what a cold call reads from memory."""
        out = np.zeros([len(w) for w in self.widths])
        for idx, point in self.points():
            out[idx] = self.spec(point, 1).weight_bytes / 2**20
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "in_group": self.in_group, "out_group": self.out_group,
                "block": list(self.block) if self.block else None, "axes": list(self.axes),
                "widths": [list(map(int, w)) for w in self.widths], "times": np.asarray(self.times).tolist(),
                "spread": np.asarray(self.spread).tolist(), "geometry": self.geometry}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LayerEntry":
        return cls(d["name"], d["kind"], d["in_group"], d["out_group"], tuple(d["block"]) if d["block"] else None,
                   tuple(d["axes"]), [list(map(int, w)) for w in d["widths"]],
                   np.asarray(d["times"], dtype=np.float64), dict(d["geometry"]),
                   np.asarray(d["spread"], dtype=np.float64))


def _interp(grid: Sequence[int], w: float, group: str) -> np.ndarray:
    """Weights over ``grid`` that give the value at width ``w`` (one-hot on the grid, else linear)."""
    v = np.zeros(len(grid))
    if w in grid:
        v[list(grid).index(w)] = 1.0
        return v
    if not grid[0] < w < grid[-1]:
        raise TasError(f"width {w} of group {group} is outside the latency table's grid "
                       f"{grid[0]}..{grid[-1]}; rebuild the table for this search space")
    j = bisect.bisect_left(grid, w)
    t = (w - grid[j - 1]) / (grid[j] - grid[j - 1])
    v[j - 1], v[j] = 1.0 - t, t
    return v


class LatencyTable:
    """Per-layer latency grids of one model on one runtime, plus the fixed overhead (all ms).

    Attributes:
        key: what the table was measured for (see :func:`cache_key`).
        layers: one :class:`LayerEntry` per conv / linear layer.
        groups: ``{group: {"channels", "widths"}}`` (the grid of each group).
        stages: ``{stage: {"num_blocks", "depths"}}``.
        whole_ms: the whole original model, measured; call_ms: an empty model's call.
        overhead_ms: ``max(0, whole_ms - Σ full-width entries)``; ``overhead_raw_ms`` unclamped.
        layer_scale: ``whole_ms / Σ full-width entries`` when the layers sum to more than the whole
            model (``clamped``), else 1. Without a calibration every prediction is ``overhead_ms +
            layer_scale × Σ entries``, so the full model is predicted at ``whole_ms`` either way.
        calibration: the fit against whole networks (:mod:`tas.deploy.latency.calibrate`), or None:
            ``{"cold": fit, "steady": fit, "samples": [...]}``, each fit ``{"scale", "per_mb",
            "overhead", "terms", "residuals"}``. With it, a timing's prediction is ``overhead +
            scale × Σ entries + per_mb × Σ weight MB`` (:meth:`predict`), and the budget
            (:meth:`exact`, :meth:`expected`) is the blend of :func:`budget_grids`.
        meta: repeats, warmup, build seconds, notes, the machine's load and the noise.
        path, source: where it is cached and whether it came from there (``cache``) or was ``built``.
    """

    def __init__(self, key: Mapping[str, Any], layers: list[LayerEntry], groups: Mapping[str, Any],
                 stages: Mapping[str, Any], whole_ms: float, call_ms: float, meta: Mapping[str, Any] | None = None,
                 calibration: Mapping[str, Any] | None = None) -> None:
        self.key = dict(key)
        self.layers = layers
        self.groups = {n: {"channels": int(g["channels"]), "widths": [int(w) for w in g["widths"]]}
                       for n, g in groups.items()}
        self.stages = {n: {"num_blocks": int(s["num_blocks"]), "depths": [int(d) for d in s["depths"]]}
                       for n, s in stages.items()}
        self.whole_ms, self.call_ms = float(whole_ms), float(call_ms)
        self.meta = dict(meta or {})
        self.path: Path | None = None
        self.source = "built"
        self._checked: set[int] = set()
        self.set_calibration(calibration)

    def set_calibration(self, calibration: Mapping[str, Any] | None) -> None:
        """Install ``calibration`` (None: none) and recompute everything derived from the entries
        (call it again after changing an entry's times)."""
        self.calibration = dict(calibration) if calibration else None
        self.sum_full_ms = float(sum(e.full_ms for e in self.layers))
        self.overhead_raw_ms = self.whole_ms - self.sum_full_ms
        self.overhead_ms = max(0.0, self.overhead_raw_ms)
        self.clamped = self.overhead_raw_ms < 0
        # Layers timed alone each read their input cold; inside the network it is still cached
        # from the layer before, a cost that grows with the layer. So when the layers sum to more
        # than the whole network (cifar_resnet20 at batch 32 here: 7.3 vs 5.9 ms), they are
        # scaled down together rather than offset by a negative overhead, which would make small
        # architectures far too fast. Ratios to the full model are the same either way.
        self.layer_scale = self.whole_ms / self.sum_full_ms if self.clamped else 1.0
        self._mb = [e.weight_mb() for e in self.layers]
        if self.calibration is None:
            self._grids = [self.layer_scale * np.asarray(e.times, dtype=np.float64) for e in self.layers]
            self._base = self.overhead_ms
        else:
            self._grids, self._base = budget_grids(self.layers, self._mb, self.calibration)
        self._tensors = [torch.as_tensor(g, dtype=torch.float64) for g in self._grids]
        self._matrices: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}

    # -- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, "key": self.key, "unit": "ms", "groups": self.groups, "stages": self.stages,
                "whole_ms": self.whole_ms, "call_ms": self.call_ms, "sum_full_ms": self.sum_full_ms,
                "overhead_raw_ms": self.overhead_raw_ms, "overhead_ms": self.overhead_ms, "clamped": self.clamped,
                "layer_scale": self.layer_scale, "calibration": self.calibration,
                "meta": self.meta, "layers": [e.to_dict() for e in self.layers]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LatencyTable":
        if d.get("format") != FORMAT_VERSION:
            raise CheckpointError(f"latency table format {d.get('format')!r}, expected {FORMAT_VERSION}")
        try:
            return cls(d["key"], [LayerEntry.from_dict(e) for e in d["layers"]], d["groups"], d["stages"],
                       d["whole_ms"], d["call_ms"], d.get("meta"), d.get("calibration"))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"malformed latency table: {type(e).__name__}: {e}") from None

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        atomic_write_json(path, self.to_dict())
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        table = cls.from_dict(read_json(path, "latency table"))
        table.path, table.source = Path(path), "cache"
        return table

    # -- exact ------------------------------------------------------------------------------
    def _vector(self, group: str, width: float) -> np.ndarray:
        return _interp(self.groups[group]["widths"], width, group)

    def exact(self, widths: Mapping[str, int], depths: Mapping[str, int]) -> float:
        """The budget's latency (ms) of the architecture with these group widths and stage depths:
        without a calibration the cold prediction; with one, the blend of :func:`budget_grids`
        (the cold prediction at the full model, ratios to it halfway between the cold and the
        steady-state ratio).

        A width between grid points is linearly interpolated; outside the grid is a TasError.
        """
        return self._base + self._sum(self._grids, widths, depths)

    def predict(self, widths: Mapping[str, int], depths: Mapping[str, int], timing: str = "cold") -> float:
        """Predicted latency (ms) in one timing (:data:`TIMINGS`): the calibration's fit of it, or
        without one the cold prediction (:meth:`exact`), times :attr:`steady_scale` for ``steady``
        (None when the table has no steady-state measurement)."""
        if timing not in TIMINGS:
            raise TasError(f"unknown timing {timing!r} (one of {', '.join(TIMINGS)})")
        if self.calibration is None:
            cold = self.exact(widths, depths)
            scale = self.steady_scale
            return cold if timing == "cold" else (None if scale is None else cold * scale)
        fit = self.calibration[timing]
        return (fit["overhead"] + fit["scale"] * self._sum([e.times for e in self.layers], widths, depths)
                + fit["per_mb"] * self._sum(self._mb, widths, depths))

    def predict_arch(self, arch: Any, timing: str = "cold") -> float:
        """:meth:`predict` of a :class:`tas.prune.arch.Arch`."""
        return self.predict({n: g["width"] for n, g in arch.groups.items()},
                            {n: s["depth"] for n, s in arch.stages.items()}, timing)

    def layer_sums(self, widths: Mapping[str, int], depths: Mapping[str, int]) -> tuple[float, float]:
        """``(Σ entries ms, Σ weight MB)`` over the layers this architecture keeps: the features
        the calibration fits."""
        return self._sum([e.times for e in self.layers], widths, depths), self._sum(self._mb, widths, depths)

    def _sum(self, grids: Sequence[np.ndarray], widths: Mapping[str, int], depths: Mapping[str, int]) -> float:
        """Σ over the kept layers of ``grids[layer]`` read at ``widths``."""
        total = 0.0
        for e, grid in zip(self.layers, grids):
            if e.block is not None:
                if e.block[0] not in depths:
                    raise TasError(f"no depth given for stage {e.block[0]}")
                if e.block[1] >= depths[e.block[0]]:
                    continue
            v = grid
            for a in reversed(e.axes):
                if a not in widths:
                    raise TasError(f"no width given for group {a}")
                v = v @ self._vector(a, widths[a])
            total += float(v)
        return total

    def exact_arch(self, arch: Any) -> float:
        """:meth:`exact` of a :class:`tas.prune.arch.Arch`."""
        return self.exact({n: g["width"] for n, g in arch.groups.items()},
                          {n: s["depth"] for n, s in arch.stages.items()})

    @property
    def steady_scale(self) -> float | None:
        """The whole model's steady-state latency over its predicted full latency, or None when the
        table has no steady-state measurement (torch runtimes, fake timers, older tables).

        Layers are timed cold (right after other models), which suits a network bigger than the
        cache; served back to back, a small network keeps its weights cached and runs faster. This
        one factor, measured on the original, maps every prediction to the steady state; ratios
        to the original (what a ``--latency-ratio`` target constrains) do not change.
        """
        steady = self.meta.get("steady_ms")
        return float(steady) / self.full() if steady and self.full() > 0 else None

    def full(self) -> float:
        """Predicted latency of the full model (= ``whole_ms``, up to interpolation rounding)."""
        return self.exact({n: g["channels"] for n, g in self.groups.items()},
                          {n: s["num_blocks"] for n, s in self.stages.items()})

    def _candidates(self, supernet: Any | None) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
        if supernet is None:
            return ({n: g["widths"] for n, g in self.groups.items()},
                    {n: s["depths"] for n, s in self.stages.items()})
        self.check_supernet(supernet)
        return ({n: list(g.widths) for n, g in supernet.groups().items()},
                {n: list(supernet.stage_depths[n]) for n in supernet.graph.stages})

    def smallest(self, supernet: Any | None = None) -> float:
        """Predicted latency of the smallest architecture (every group's narrowest candidate, every
        stage's fewest blocks) of ``supernet``'s space, or of the table's grid without one."""
        widths, depths = self._candidates(supernet)
        return self.exact({n: w[0] for n, w in widths.items()}, {n: d[0] for n, d in depths.items()})

    def fastest(self, supernet: Any | None = None, sweeps: int = 10) -> tuple[float, dict[str, int], dict[str, int]]:
        """``(ms, widths, depths)`` of the fastest architecture found: fewest blocks, and widths by
        coordinate descent from the smallest architecture (latency need not fall with width, so the
        smallest architecture is not always the fastest). Never slower than :meth:`smallest`."""
        cands, dcands = self._candidates(supernet)
        depths = {n: d[0] for n, d in dcands.items()}  # entries are >= 0: dropping blocks never slows
        widths = {n: w[0] for n, w in cands.items()}
        best = self.exact(widths, depths)
        for _ in range(sweeps):
            improved = False
            for n, ws in cands.items():
                for w in ws:
                    if w == widths[n]:
                        continue
                    trial = self.exact({**widths, n: w}, depths)
                    if trial < best - 1e-12:
                        best, widths, improved = trial, {**widths, n: w}, True
            if not improved:
                break
        return best, widths, depths

    # -- expected ---------------------------------------------------------------------------
    def check_supernet(self, supernet: Any) -> None:
        """TasError unless ``supernet`` is the model (graph, input size) this table was measured for."""
        if id(supernet) in self._checked:
            return
        graph = supernet.graph
        if graph_fingerprint(graph) != self.key.get("graph"):
            raise TasError(f"this latency table was measured for another network ({self.key.get('model')}); "
                           f"the supernet is a {supernet.model_name}: rebuild the table")
        if list(supernet.input_size) != list(self.key.get("input_size", [])):
            raise TasError(f"this latency table was measured at input size {self.key.get('input_size')}, the "
                           f"supernet costs architectures at {list(supernet.input_size)}: rebuild the table")
        for n, g in supernet.groups().items():
            grid = self.groups[n]["widths"]
            for w in g.widths:
                _interp(grid, w, n)  # raises outside the grid
        self._checked.add(id(supernet))

    def _matrix(self, group: str, cands: Sequence[int]) -> torch.Tensor:
        key = (group, tuple(cands))
        if key not in self._matrices:
            self._matrices[key] = torch.as_tensor(np.stack([self._vector(group, w) for w in cands]), dtype=torch.float64)
        return self._matrices[key]

    def expected(self, supernet: Any) -> torch.Tensor:
        """Differentiable expected latency (ms, float32 scalar on the CPU) under softmax(α) and softmax(β).

        Per layer ``Σ_ij p_in(i) p_out(j) T[i, j]`` (one distribution for a depthwise conv), times
        its block's probability of being kept (as :mod:`tas.nas.cost`), plus the fixed overhead, over
        the budget's grids (:meth:`exact`'s).
        """
        self.check_supernet(supernet)
        q: dict[str, torch.Tensor] = {}
        for n, g in supernet.groups().items():
            q[n] = g.probs().cpu().double() @ self._matrix(n, g.widths)
        keep: dict[tuple[str, int], torch.Tensor] = {}
        total = torch.zeros((), dtype=torch.float64)
        for e, t in zip(self.layers, self._tensors):
            v = t
            for a in reversed(e.axes):
                v = v @ q[a]
            if e.block is not None and e.block[1] > 0:
                if e.block not in keep:
                    stage, b = e.block
                    probs = supernet.depth_probs(stage).cpu().double()
                    keep[e.block] = probs[torch.tensor(supernet.stage_depths[stage]) > b].sum()
                v = v * keep[e.block]
            total = total + v
        return (total + self._base).float()

    def current(self, supernet: Any) -> float:
        """Predicted latency (ms) of ``supernet``'s current argmax architecture."""
        widths = {n: g.widths[int(g.probs().argmax())] for n, g in supernet.groups().items()}
        depths = {n: supernet.stage_depths[n][int(supernet.depth_probs(n).argmax())] for n in supernet.graph.stages}
        return self.exact(widths, depths)

    def check_target(self, supernet: Any, ratio: float) -> None:
        """Refuse a latency budget (a fraction of :meth:`full`) that no architecture of ``supernet``'s
        space is predicted to meet, naming the reachable minimum."""
        if not 0 < ratio <= 1:
            raise TasError(f"--latency-ratio must be in (0, 1], got {ratio}")
        full = self.full()
        fastest, _, _ = self.fastest(supernet)
        if ratio * full < fastest:
            raise TasError(f"latency target {ratio:.3f} is unreachable: the fastest architecture in this search "
                           f"space is predicted at {fastest:.4g} ms, {fastest / full:.3f} of the full model's "
                           f"{full:.4g} ms ({self.describe()})")

    # -- per group --------------------------------------------------------------------------
    def group_latency(self, group: str, width: int) -> float:
        """Latency (ms) of the layers touching ``group`` at ``width``, every other group at full width
        and every block kept."""
        total = 0.0
        for e, grid in zip(self.layers, self._grids):
            if group not in e.axes:
                continue
            v = grid
            for a in reversed(e.axes):
                v = v @ (self._vector(a, width) if a == group else self._vector(a, self.groups[a]["channels"]))
            total += float(v)
        return total

    def noisy_points(self, limit: float) -> list[tuple[int, tuple[int, ...]]]:
        """``(layer index, grid index)`` of every entry whose repeats spread more than ``limit``."""
        return [(k, tuple(int(i) for i in idx)) for k, e in enumerate(self.layers)
                for idx in zip(*np.nonzero(np.asarray(e.spread) > limit))]

    # -- reporting --------------------------------------------------------------------------
    def describe(self) -> str:
        k = self.key
        return f"{k.get('runtime')}, batch {k.get('batch')}, {k.get('threads')} threads"

    def summary(self) -> str:
        """A text table: one row per layer, then the totals."""
        rows = []
        for e in self.layers:
            groups = f"{e.in_group or '-'} -> {e.out_group or '-'}"
            grid = "x".join(str(len(w)) for w in e.widths) or "1"
            rows.append([e.name, groups, grid, f"{float(e.times.min()):.4f}", f"{e.full_ms:.4f}"])
        rows.append(["Σ layers at full width", "", "", "", f"{self.sum_full_ms:.4f}"])
        rows.append(["whole model (measured)", "", "", "", f"{self.whole_ms:.4f}"])
        over = f"{self.overhead_ms:.4f}" + (f" (clamped from {self.overhead_raw_ms:.4f})" if self.clamped else "")
        rows.append(["fixed overhead", "", "", "", over])
        if self.clamped:
            rows.append(["layer scale (whole / Σ layers)", "", "", "", f"{self.layer_scale:.4f}"])
        rows.append(["predicted: full / smallest", "", "", "", f"{self.full():.4f} / {self.smallest():.4f}"])
        if self.steady_scale is not None:
            rows.append(["whole model, steady state (warm)", "", "", "",
                         f"{self.meta['steady_ms']:.4f} (predictions x {self.steady_scale:.3f})"])
        for timing in TIMINGS if self.calibration else ():
            f = self.calibration[timing]
            rows.append([f"calibration, {timing} (ms)", "", "", "",
                         f"{f['overhead']:.4f} + {f['scale']:.3f} x layers + {f['per_mb']:.4f} x MB; "
                         f"residuals up to {max(map(abs, f['residuals'])):.1%}"])
        noise = self.meta.get("noise")
        if noise:
            rows.append(["noise: load before / after, entries over the limit", "", "", "",
                         f"{_fmt_load(noise.get('load_before'))} / {_fmt_load(noise.get('load_after'))}, "
                         f"{noise['noisy']} of {noise['entries']} (re-measured {noise['remeasured']})"])
        return format_table(rows, ["layer", "groups (in -> out)", "grid", "min ms", "full-width ms"])


def _fmt_load(v: float | None) -> str:
    return "?" if v is None else f"{v:.2f}"


def budget_grids(layers: Sequence[LayerEntry], mbs: Sequence[np.ndarray], calibration: Mapping[str, Any]
                 ) -> tuple[list[np.ndarray], float]:
    """The per-layer grids and the overhead (ms) a calibrated table's budget sums.

    One architecture has to meet a ``--latency-ratio`` in both timings, whose ratios differ where a
    network's weights fit in the cache (smaller networks gain more from it in the steady state).
    The budget is therefore the mix, ``blend`` (the calibration's, default ½) of the way, between the
    cold prediction and the steady one rescaled to the cold one's full model: at the full model it
    is the cold prediction, and its ratio to it lies between the two ratios, so the two misses
    split. Both fits are linear in the grids, and so is the mix: one grid per layer as before.
    """
    cold, steady, w = calibration["cold"], calibration["steady"], float(calibration.get("blend", 0.5))
    full_ms = sum(e.full_ms for e in layers)
    full_mb = sum(float(m[tuple(len(x) - 1 for x in e.widths)]) for e, m in zip(layers, mbs))

    def at_full(fit: Mapping[str, float]) -> float:
        return fit["overhead"] + fit["scale"] * full_ms + fit["per_mb"] * full_mb

    k = w * at_full(cold) / at_full(steady)  # the steady prediction, rescaled, weighted
    scale = (1 - w) * cold["scale"] + k * steady["scale"]
    per_mb = (1 - w) * cold["per_mb"] + k * steady["per_mb"]
    grids = [scale * np.asarray(e.times, dtype=np.float64) + per_mb * m for e, m in zip(layers, mbs)]
    return grids, (1 - w) * cold["overhead"] + k * steady["overhead"]


def graph_fingerprint(graph: Any) -> str:
    desc = {"family": graph.family,
            "groups": [[n, g.channels, g.conv_groups] for n, g in graph.groups.items()],
            "layers": [[l.name, l.kind, l.in_group, l.out_group, list(l.block) if l.block else None] for l in graph.layers],
            "stages": [[n, s.num_blocks] for n, s in graph.stages.items()]}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]
