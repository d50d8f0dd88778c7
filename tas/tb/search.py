"""What a search writes to TensorBoard: distributions, the derived architecture, the final decode.

Per logged epoch (:func:`log_search_epoch`) and once more for the decoded architecture at the final
step (:func:`log_search_end`):

- ``width_probs`` / ``depth_probs`` (Images): labelled heat-maps (:mod:`tas.tb.figures`);
- ``width/<group>`` / ``depth/<stage>`` (Histograms): one bar per candidate, its probability;
- ``arch`` (Text): the architecture as markdown tables;
- ``search/val_top1``, ``search/derived_{flops,params}_ratio`` (Scalars).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from .figures import ProbRow, heatmap_image, padded_rows, probability_figure
from .runs import log_graph

__all__ = ["candidate_histogram", "log_distributions", "log_attention", "arch_markdown", "log_search_epoch",
           "log_search_end", "kept_blocks"]

# A bucket whose count is exactly 0 at either end is dropped by TensorBoard's reader, which then
# stretches the next bucket to ``min``/``max``; a softmax underflowing to 0 must not do that.
_TINY = 1e-12


def candidate_histogram(writer: Any, tag: str, candidates: Sequence[float], probs: Sequence[float],
                        step: int) -> None:
    """A histogram with one bucket per candidate holding its probability.

    The bucket edges lie halfway between neighbouring candidates (the outermost half a spacing
    beyond the first and last), so every candidate sits inside its own bucket of non-zero width.
    Single-candidate rows have nothing to show and are skipped.
    """
    c = [float(x) for x in candidates]
    if len(c) < 2:
        return
    p = [max(float(x), _TINY) for x in probs]
    mids = [(a + b) / 2 for a, b in zip(c, c[1:])]
    lo, hi = c[0] - (mids[0] - c[0]), c[-1] + (c[-1] - mids[-1])
    writer.add_histogram_raw(tag, min=lo, max=hi, num=sum(p), sum=sum(x * w for x, w in zip(c, p)),
                             sum_squares=sum(x * x * w for x, w in zip(c, p)), bucket_limits=mids + [hi],
                             bucket_counts=p, global_step=step)


def _width_rows(supernet: Any, decoded: Any = None) -> list[ProbRow]:
    return [ProbRow(n, list(g.widths), g.probs().detach().cpu().tolist(),
                    decoded.groups[n]["width"] if decoded is not None else None)
            for n, g in supernet.groups().items()]


def _depth_rows(supernet: Any, decoded: Any = None) -> list[ProbRow]:
    return [ProbRow(n, list(d), supernet.depth_probs(n).detach().cpu().tolist(),
                    decoded.stages[n]["depth"] if decoded is not None else None)
            for n, d in supernet.stage_depths.items()]


def log_distributions(writer: Any, supernet: Any, step: int, decoded: Any = None, histograms: bool = True) -> None:
    """Width and depth distributions of ``supernet``: heat-map figures and per-row histograms.

    ``decoded`` (the final :class:`~tas.prune.arch.Arch`) stars each row's decoded choice in the figures.
    """
    when = f"step {step}" + (" — final, after the decode" if decoded is not None else "")
    rows = _width_rows(supernet, decoded)
    writer.add_figure("width_probs", probability_figure(rows, f"width probabilities per channel group, {when}"),
                      step, close=False)
    drows = _depth_rows(supernet, decoded)
    if drows:
        writer.add_figure("depth_probs", probability_figure(drows, f"depth probabilities per stage, {when}",
                                                            candidate="depth"), step, close=False)
    if histograms:
        for r in rows:
            candidate_histogram(writer, f"width/{r.name}", r.candidates, r.probs, step)
        for r in drows:
            candidate_histogram(writer, f"depth/{r.name}", r.candidates, r.probs, step)


def log_attention(writer: Any, supernet: Any, step: int) -> None:
    """SA++ state: ``attention/<group>`` histograms and the ``sapp_mask`` image (groups × blocks).

    In the mask image a kept block is drawn by its attention (scaled by the group's maximum) and a
    masked block black; groups with fewer blocks are padded black.
    """
    rows = []
    for name, g in supernet.groups().items():
        if g.attn_logits is None:
            continue
        a = g.attention().detach().cpu()
        writer.add_histogram(f"attention/{name}", a, step)
        rows.append(torch.where(g.mask.cpu(), a / a.max(), torch.zeros_like(a)))
    if rows:
        writer.add_image("sapp_mask", heatmap_image(padded_rows(rows), cell=(12, 6)), step)


def kept_blocks(group: Any, indices: Sequence[int]) -> list[int]:
    """The SA++ blocks (ascending) that the kept channel ``indices`` of ``group`` belong to."""
    return sorted(set(group.block_of[torch.as_tensor(list(indices), dtype=torch.long)].tolist()))


def _ranges(ids: Sequence[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` → ``"0–2, 5, 7–8"``."""
    out, start = [], None
    for i, x in enumerate(ids):
        if start is None:
            start = x
        if i + 1 == len(ids) or ids[i + 1] != x + 1:
            out.append(str(start) if start == x else f"{start}–{x}")
            start = None
    return ", ".join(out)


def arch_markdown(arch: Any, supernet: Any = None, title: str = "") -> str:
    """``arch`` as two markdown tables (groups: original and kept width, and for SA++ groups the
    kept blocks; stages: original and kept depth), under a line of its costs."""
    sapp = {n: g for n, g in (supernet.groups().items() if supernet is not None else ())
            if g.attn_logits is not None}
    lines = [f"**{title}** " if title else "",
             f"FLOPs {arch.flops:,} / {arch.full_flops:,} ({arch.flops_ratio:.3f}), "
             f"params {arch.params:,} / {arch.full_params:,} ({arch.params_ratio:.3f})", ""]
    head = ["group", "original", "kept"] + (["kept SA++ blocks"] if sapp else [])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n, g in arch.groups.items():
        cells = [n, str(g["channels"]), str(g["width"])]
        if sapp:
            if n in sapp:
                blocks = kept_blocks(sapp[n], g["indices"])
                cells.append(f"{_ranges(blocks)} ({len(blocks)} of {sapp[n].attn_logits.numel()} "
                             f"× {sapp[n].block_size} ch)")
            else:
                cells.append("")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| stage | blocks | kept |", "|---|---|---|"]
    lines += [f"| {n} | {s['blocks']} | {s['depth']} |" for n, s in arch.stages.items()]
    return "\n".join(lines).lstrip()


def log_search_epoch(writer: Any, supernet: Any, arch: Any, top1: float, step: int) -> None:
    """After an epoch: distributions, SA++ state, the derived (argmax) architecture and its
    hard-mode test top-1.

    ``search/val_top1`` is a fraction (0–1), not the percentage ``metrics.json`` holds:
    TensorBoard's default "ignore outliers" scaling keeps only values between the 5th and 95th
    percentile of a series, which for the two points of a two-epoch search is none of them; the
    chart then falls back to the range [0, 1], where only a fraction shows.
    """
    log_distributions(writer, supernet, step)
    if any(g.attn_logits is not None for g in supernet.groups().values()):
        log_attention(writer, supernet, step)
    writer.add_scalar("search/val_top1", top1 / 100.0, step)
    writer.add_scalar("search/derived_flops_ratio", arch.flops_ratio, step)
    writer.add_scalar("search/derived_params_ratio", arch.params_ratio, step)
    writer.add_text("arch", arch_markdown(arch, supernet, f"epoch {arch.meta.get('epoch', '?')}: argmax"), step)


def log_search_end(writer: Any, supernet: Any, arch: Any, slim: torch.nn.Module | None, step: int) -> None:
    """The decoded architecture at the final ``step``: heat-maps with the decode starred, the
    ``arch`` table (what ``arch.json`` holds) and the slim network's graph."""
    log_distributions(writer, supernet, step, decoded=arch, histograms=False)
    writer.add_scalar("search/derived_flops_ratio", arch.flops_ratio, step)
    writer.add_scalar("search/derived_params_ratio", arch.params_ratio, step)
    moves = arch.meta.get("projection_steps")
    title = "final, decoded (arch.json)" + (f": the decode moved the last argmax {moves} candidate step(s)"
                                            if moves else ": the last argmax, already within the budget")
    writer.add_text("arch", arch_markdown(arch, supernet, title), step)
    if slim is not None:
        log_graph(writer, slim, arch.input_size)
