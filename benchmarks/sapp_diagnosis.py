"""Selection diagnostics of one finished cell of ``sapp_ablation.py``: they separate *which
channels* a selection kept from *how well* the search trained them.

For a cell's searched architecture: the hard-mode network's test top-1; the teacher's kept channels
materialised under three channel orders (the search's own, the prefix, the teacher's BN |γ|) with BN
recalibrated; and for an SA++ search its attention statistics and the hard-mode network before and
after folding the block attention into BN. Cached per cell in ``diagnostics.json``.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import torch

from tas.train import engine
from tas.nas import searcher as searching
from tas.prune.arch import Arch
from tas.io.checkpoint import atomic_write_json, load_weights, read_json
from tas.prune.load import load_run


class Evaluator:
    """Test top-1 on the distillation's test split (the full 10k test set at ``limit`` >= 10000),
    optionally after BN recalibration on its training split; the data is loaded on first use."""

    def __init__(self, dataset: str, data_dir: str | None, limit: int | None) -> None:
        self.dataset, self.data_dir, self.limit = dataset, data_dir, limit
        self._loaders: dict[str, Any] = {}

    def loaders(self) -> dict[str, Any]:
        if not self._loaders:
            from tas.data import create_loaders

            lim = create_loaders(self.dataset, data_dir=self.data_dir, batch_size=64, seed=0, limit=self.limit)
            test = torch.utils.data.DataLoader(lim["test"].dataset, batch_size=256, shuffle=False)
            self._loaders.update(test=test, train=lim["train"])
        return self._loaders

    def top1(self, model: torch.nn.Module) -> float:
        return round(engine.evaluate(model, self.loaders()["test"], "cpu")["top1"], 2)

    def recal_top1(self, model: torch.nn.Module) -> float:
        # the same calibration batches and augmentation for every network
        searching.recalibrate_bn(model, self.loaders()["train"], "cpu", batches=20, seed=0)
        return self.top1(model)


def with_indices(arch: Arch, indices: dict[str, list[int]], method: str) -> Arch:
    d = arch.to_dict()
    for n, g in d["groups"].items():
        g["indices"] = sorted(int(i) for i in indices[n][: g["width"]])
    d["method"] = method
    return Arch.from_dict(d)


def teacher_gamma_ranking(teacher: torch.nn.Module) -> dict[str, list[int]]:
    """Per group, channels by descending Σ|γ| of the teacher's BNs writing the group."""
    from tas.prune.families import describe_model

    graph = describe_model(teacher)
    scores: dict[str, torch.Tensor] = {}
    for layer in graph.layers:
        if layer.kind == "bn" and layer.out_group is not None:
            g = teacher.get_submodule(layer.name).weight.detach().abs()
            scores[layer.out_group] = scores.get(layer.out_group, 0) + g
    return {n: torch.argsort(scores[n], descending=True, stable=True).tolist() if n in scores else list(range(g.channels))
            for n, g in graph.groups.items()}


def drop_attention(supernet: Any) -> None:
    """Hard mode as it was before it applied the SA++ attention: every group's attention strength 0
    (attention 1) and its mask lifted, in place.

    Hard mode and the materialised network multiply each channel by attention × mask, as search
    mode does (folded into the BN affine in the slim network); this undoes that, for comparison.
    """
    with torch.no_grad():
        for g in supernet.groups().values():
            if g.attn_logits is not None:
                g.attn_strength.fill_(0.0)
                g.mask.fill_(True)


def sapp_stats(supernet: Any, arch: Arch) -> dict[str, Any]:
    """How SA++ ranked blocks: differs from the prefix? attention spread, masked blocks kept by the arch."""
    searched = differ = masked_kept = 0
    spreads = []
    per_group = {}
    for n, g in supernet.groups().items():
        if g.attn_logits is None:
            continue
        searched += 1
        a = g.attention().detach()
        kept = sorted(arch.groups[n]["indices"])
        w = arch.groups[n]["width"]
        if kept != list(range(w)):
            differ += 1
        kept_blocks = sorted({int(g.block_of[i]) for i in kept})
        masked_kept += sum(1 for b in kept_blocks if not bool(g.mask[b]))
        spreads.append(float(a.max() / a.min()))
        per_group[n] = {"width": w, "channels": g.channels, "kept_blocks": kept_blocks,
                        "attention": [round(float(x), 3) for x in a], "mask": [int(x) for x in g.mask]}
    return {"groups_searched": searched, "groups_not_prefix": differ, "masked_blocks_kept": masked_kept,
            "attn_max_over_min_median": round(statistics.median(spreads), 3) if spreads else None,
            "groups": per_group}


def diagnose(cell: Path, teacher_dir: Path, evaluator: Evaluator) -> dict[str, Any]:
    """Selection diagnostics of one finished cell (cached in ``<cell>/diagnostics.json``)."""
    out = cell / "diagnostics.json"
    if out.is_file():
        return read_json(out)
    from tas.prune.materialize import materialize
    from tas.nas.supernet import create_supernet

    sdir = cell / "search"
    arch = Arch.from_json(sdir / "arch.json")
    teacher, _ = load_run(teacher_dir)
    res: dict[str, Any] = {}
    slim, _ = load_run(sdir)
    res["hard_top1_test"] = evaluator.top1(slim)
    scfg = read_json(sdir / "config.json")["search"]
    prefix = {n: list(range(g["channels"])) for n, g in arch.groups.items()}
    for key, a in (("own", arch), ("prefix", with_indices(arch, prefix, "prefix")),
                   ("gamma", with_indices(arch, teacher_gamma_ranking(teacher), "gamma"))):
        if key == "prefix" and scfg["selection"] == "prefix":
            res["inherit_top1_prefix"] = res["inherit_top1_own"]  # the same network
            continue
        res[f"inherit_top1_{key}"] = evaluator.recal_top1(materialize(teacher, a))
    if scfg["selection"] == "sapp":
        sn = create_supernet(teacher, scfg["space"], input_size=arch.input_size, model_name=arch.model,
                             model_kwargs=arch.model_kwargs, selection="sapp", block_size=scfg["block_size"])
        sn.load_state_dict(load_weights(sdir / "supernet.safetensors"))
        if scfg["k"] is not None:
            sn.k = scfg["k"]
        sn.set_arch(arch)
        res["sapp"] = sapp_stats(sn, arch)
        res["hard_top1_folded_recal"] = evaluator.recal_top1(sn)  # hard mode applies attention × mask
        drop_attention(sn)
        res["hard_top1_unfolded_recal"] = evaluator.recal_top1(sn)
    atomic_write_json(out, res)
    return res
