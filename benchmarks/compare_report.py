"""``benchmarks/compare.py``'s report: the summary tables (accuracy, robustness, recall distortion),
the verdicts, the plot and the markdown. The cells and their cache are ``compare.py``'s."""
from __future__ import annotations

import itertools
import os
import platform
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from benchkit import log
from tas.cli import format_table

REPO = Path(__file__).resolve().parents[1]


def _ms(values: list[float]) -> str:
    if not values:
        return "–"
    m = statistics.mean(values)
    return f"{m:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{m:.2f}"


def summarize(results: dict, models: list[str], ratios: list[float], methods: list[str]) -> tuple[list, list]:
    """Rows of the main table and of the recall-distortion table, one per (model, ratio, method)."""
    rows, rd_rows = [], []
    for model in models:
        t = results["teachers"].get(model)
        if t is None:
            continue
        tr = t.get("robust")
        rows.append([model, "teacher", "1.00", f"{t['top1']:.2f}", f"{tr['mean_corrupted']:.2f}" if tr else "–",
                     "1.000", "1.000", f"{t.get('latency_ms', float('nan')):.2f}", f"{t['wall_s']:.0f}", "1"])
        for ratio in ratios:
            for method in methods:
                cs = [c for c in results["cells"].values()
                      if c["model"] == model and c["ratio"] == ratio and c["method"] == method]
                if not cs:
                    continue
                lat = [c["latency_ms"] for c in cs if "latency_ms" in c]
                rows.append([model, method, f"{ratio:.2f}", _ms([c["top1"] for c in cs]),
                             _ms([c["robust"]["mean_corrupted"] for c in cs if "robust" in c]),
                             f"{statistics.mean(c['flops_ratio'] for c in cs):.3f}",
                             f"{statistics.mean(c['params_ratio'] for c in cs):.3f}",
                             f"{statistics.mean(lat):.2f}" if lat else "–",
                             f"{statistics.mean(c['wall_s'] for c in cs):.0f}", str(len(cs))])
                gaps = [c["recall"]["intensification"] for c in cs if c["recall"]["intensification"] is not None]
                below = [c["recall"]["mean_change_below"] for c in cs if c["recall"]["mean_change_below"] is not None]
                above = [c["recall"]["mean_change_above"] for c in cs if c["recall"]["mean_change_above"] is not None]
                rd_rows.append([model, method, f"{ratio:.2f}",
                                f"{100 * statistics.mean(below):+.2f}" if below else "–",
                                f"{100 * statistics.mean(above):+.2f}" if above else "–",
                                f"{100 * statistics.mean(gaps):+.2f}" if gaps else "–",
                                f"{sum(c['recall']['intensified'] for c in cs)}/{len(cs)}"])
    return rows, rd_rows


HEADER = ["model", "method", "FLOPs target", "top-1 % (mean ± sd)", "corrupted top-1 %", "FLOPs kept",
          "params kept", "ORT ms @ bs 32", "wall s", "seeds"]
ROBUST_HEADER = ["model", "method", "FLOPs target", "clean top-1 %", "corrupted top-1 %", "corrupted / clean",
                 "Δ vs teacher (pp of ratio)", "pruning"]


def verdict(deltas: list[float]) -> str:
    """``helped`` / ``hurt`` when every seed moved the corrupted/clean ratio the same way, else ``mixed``."""
    if deltas and all(d > 0 for d in deltas):
        return "helped"
    if deltas and all(d < 0 for d in deltas):
        return "hurt"
    return "mixed" if deltas else "–"


def summarize_robustness(results: dict, models: list[str], ratios: list[float], methods: list[str]) -> list:
    """Rows of the robustness table: per (model, ratio, method), the corrupted/clean ratio against the teacher's."""
    rows = []
    for model in models:
        t = results["teachers"].get(model, {}).get("robust")
        if t is None:
            continue
        rows.append([model, "teacher", "1.00", f"{t['clean']:.2f}", f"{t['mean_corrupted']:.2f}",
                     f"{t['relative']:.3f}", "", ""])
        for ratio in ratios:
            for method in methods:
                cs = [c["robust"] for c in results["cells"].values() if c["model"] == model and c["ratio"] == ratio
                      and c["method"] == method and "robust" in c]
                if not cs:
                    continue
                deltas = [c["relative"] - t["relative"] for c in cs]
                rows.append([model, method, f"{ratio:.2f}", _ms([c["clean"] for c in cs]),
                             _ms([c["mean_corrupted"] for c in cs]), f"{statistics.mean(c['relative'] for c in cs):.3f}",
                             f"{100 * statistics.mean(deltas):+.2f}", verdict(deltas)])
    return rows
RD_HEADER = ["model", "method", "FLOPs target", "mean Δrecall below-acc. classes %", "mean Δrecall above %",
             "intensification (pp)", "intensified"]


def _x(c: dict, teacher: dict, axis: str) -> float | None:
    """A cell's position on the plot's x axis: FLOPs kept, or measured latency / the teacher's."""
    if axis == "flops":
        return c["flops_ratio"]
    return c["latency_ms"] / teacher["latency_ms"] if "latency_ms" in c and "latency_ms" in teacher else None


def plot(results: dict, models: list[str], methods: list[str], path: Path, install: bool,
         axes_x: Sequence[str] = ("flops",), title: str = "{model} on Fashion-MNIST") -> str | None:
    """top-1 per method against FLOPs kept (and/or measured latency: ``axes_x`` of ``flops``,
    ``latency``), one panel per model and axis; returns why not when there is no plot."""
    try:
        import matplotlib
    except ImportError:
        if not install:
            return "matplotlib is not installed (rerun without --no-install, or pip install matplotlib)"
        log("matplotlib not installed: pip install matplotlib (for the plot only)")
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], capture_output=True,
                              text=True)
        if proc.returncode:
            log(proc.stderr[-2000:])
        try:
            import matplotlib
        except ImportError:
            return "matplotlib could not be installed"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(m, axis) for m in models for axis in axes_x]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (model, axis) in zip(axes[0], panels):
        t = results["teachers"].get(model)
        if t is None:
            continue
        for method, marker in zip(methods, itertools.cycle("o^sDvP*X")):
            pts = {}
            for c in results["cells"].values():
                if c["model"] == model and c["method"] == method and _x(c, t, axis) is not None:
                    pts.setdefault(c["ratio"], []).append(c)
            if not pts:
                continue
            xs = [statistics.mean(_x(c, t, axis) for c in pts[r]) for r in sorted(pts)]
            ys = [statistics.mean(c["top1"] for c in pts[r]) for r in sorted(pts)]
            es = [statistics.stdev([c["top1"] for c in pts[r]]) if len(pts[r]) > 1 else 0 for r in sorted(pts)]
            ax.errorbar(xs, ys, yerr=es, marker=marker, capsize=3, label=method)
        ax.axhline(t["top1"], color="grey", ls="--", lw=1, label="teacher")
        ax.set_xlabel("FLOPs kept (fraction of the teacher's)" if axis == "flops"
                      else "measured ORT latency / the teacher's (batch 32)")
        ax.set_ylabel("test top-1 (%)")
        ax.set_title(title.format(model=model))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _corruption_levels() -> str:
    """The corruptions and their severities 1/2/3, for the text (from tas.metrics.CORRUPTIONS)."""
    from tas.metrics import CORRUPTIONS

    what = {"gaussian_noise": ("Gaussian noise (σ ", ")"), "blur": ("Gaussian blur (σ ", " px)"),
            "contrast": ("contrast (factor ", ")"), "rotation": ("rotation (", "°)")}
    return ", ".join(f"{what[n][0]}{'/'.join(f'{v:g}' for v in levels)}{what[n][1]}" for n, levels in CORRUPTIONS.items())


def render(args, results: dict, rows: list, rd_rows: list, png: Path | None, why: str | None,
           elapsed: float, robust_rows: list | None = None) -> str:
    """The markdown report; ``args`` also carries ``default_methods`` and ``default_ratios`` (the
    mode's), so the command line it prints names only what differs."""
    a = args
    mode = "--full" if a.mode == "full" else "--quick" if a.mode == "quick" else ""
    if list(a.methods) != list(a.default_methods):  # a subset or another order: say which, so the command reruns it
        mode += " --methods " + " ".join(a.methods)
    if a.ratios != a.default_ratios:
        mode += " --ratios " + " ".join(str(r) for r in a.ratios)
    plot_line = f"![top-1 vs FLOPs kept]({png.name})" if png else f"(no plot: {why})"
    out = Path(a.output).resolve()
    shown = out.relative_to(REPO) if out.is_relative_to(REPO) else out
    caveat = ("*A `--quick` run is a smoke test of the pipeline: a teacher trained for a few epochs on a few "
              "thousand images, one ratio; differences of a few tenths of a point between methods are within "
              "seed noise here. The default run (three ratios, 12000 images) is the comparison.*"
              if a.mode == "quick" else "")
    return "\n".join([
        "# Accuracy vs FLOPs: TAS and baseline pruners at equal FLOPs and equal epochs",
        "",
        f"Generated by `{('python benchmarks/compare.py ' + mode).strip()}`"
        f" on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC ({elapsed / 60:.1f} min this invocation; "
        f"cells are cached, see `{shown}/results.json`): {os.cpu_count()} CPU cores ({platform.machine()}, "
        f"shared with other jobs, 1-min load average {a.load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the "
        f"end), torch {torch.__version__} with {a.threads} thread(s).",
        "",
        f"**Setup.** Fashion-MNIST at {a.img_size}×{a.img_size} px, the first {a.limit} training images "
        f"(class-balanced) and {len(np.load(Path(a.output) / results_model(results) / 'teacher' / 'test_labels.npy'))} "
        f"test images. Teacher: {a.teacher_epochs} epochs of SGD (lr 0.1, cosine). Each method then gets the same "
        f"**{a.budget} epochs** over the same subset: `tas` searches {a.search_epochs} (one search epoch = one "
        f"pass over the subset, half for the weight steps and half for the architecture steps) and distils "
        f"{a.budget - a.search_epochs}; `plasticity` fine-tunes the teacher for {a.search_epochs} while it prunes "
        f"(one pass over the subset each) and distils {a.budget - a.search_epochs}; `uniform`, `l1`, `synflow` and "
        f"`random` choose their architecture without data, `undecayed` from 8 training batches, and each distils "
        f"{a.budget}. Distillation: `train.py --arch --teacher` (weights inherited "
        f"from the teacher's kept channels, KD α 0.9 T 4, SGD lr {a.lr}, cosine), batch {a.batch_size}. All "
        f"architectures are in the same search space (`search_spaces/cifar_resnet.yaml`); the baselines "
        f"keep full depth.",
        "",
        "**Columns.** *top-1*: test accuracy after distillation, mean ± sample standard deviation over the "
        "seeds (each seed changes the data order, TAS's sampling and `random`'s channels). *FLOPs / params "
        "kept*: exact multiply-accumulate / parameter ratios of the architecture (mean over seeds). "
        "*ORT ms*: ONNX Runtime CPU latency at batch 32, median of interleaved repeats of all models of the "
        "table (the teacher included), mean over seeds. *wall s*: architecture choice + distillation per "
        "seed (the teacher's row: its training). *corrupted top-1*: mean accuracy over Gaussian noise, blur, "
        "contrast and rotation at three severities on the first "
        f"{getattr(a, 'robust_limit', 1000)} test images (see *Robustness* below).",
        "",
        format_table(rows, HEADER),
        "",
        *([caveat, ""] if caveat else []),
        plot_line,
        "",
        "## Robustness",
        "",
        "`tas.metrics.robustness(slim, test_images, corruptions, severities)` (\"A Winning Hand\", Diffenderfer et "
        f"al. 2021): top-1 under {_corruption_levels()}, seeded, on the first "
        f"{getattr(a, 'robust_limit', 1000)} test images. *corrupted / clean*: the mean corrupted top-1 over "
        "the clean top-1 of the same images; *Δ vs teacher*: that ratio minus the teacher's, mean over seeds; "
        "*pruning*: `helped` when every seed's ratio is above the teacher's, `hurt` when every one is below, "
        "else `mixed`.",
        "",
        format_table(robust_rows or [], ROBUST_HEADER),
        "",
        "## Recall distortion",
        "",
        "`tas.metrics.recall_distortion(teacher_preds, slim_preds, labels)` per slim network: classes whose "
        "teacher recall is below the teacher's accuracy (*below*) against the others (*above*); *Δrecall* is "
        "the relative change slim/teacher − 1 per class, averaged within each set and over seeds; "
        "*intensification* = mean Δ above − mean Δ below (percentage points of relative change; positive: the "
        "hard classes lost relatively more); *intensified*: seeds where it is positive.",
        "",
        format_table(rd_rows, RD_HEADER),
        "",
        "Method notes: `uniform` keeps the same fraction of every group (each group the candidate width "
        "closest to r·C, the largest r within the budget) and the first channels; `l1` (Li et al. 2017) the "
        "same widths and the channels with the largest L1 norms of the filters producing them; `random` the "
        "same widths and random channels; `synflow` (Tanaka et al. 2020) data-free iterative global ranking "
        "(20 rounds, exponential schedule) that also chooses the widths; `plasticity` (Liu et al. 2021, GraNet, "
        "by channel) global filter-magnitude pruning during a fine-tune at a cubic rising FLOPs sparsity, with "
        "gradient-based regeneration of zeroed channels, which chooses the widths and the channels; `undecayed` "
        "(Good et al. 2022) the same widths as `l1` and the channels whose producing filters have the largest "
        "undecayed-pruning score Σ|θ·∂L/∂θ| (the data loss's gradient without the weight-decay term, on 8 "
        "unaugmented training batches); `tas` the differentiable search "
        "(widths and depths). Everything meets its FLOPs target from below within the space's rounding "
        "(widths are multiples of 8).",
        "",
    ])


def results_model(results: dict) -> str:
    return next(iter(results["teachers"]))
