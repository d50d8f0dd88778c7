"""``search_overhead.py --profile``: where a search iteration's overhead over a dense step goes.

Per model: the cost of the Python-side pieces of a step (``Supernet.sample``, ``expected_cost``,
``current_cost``), the FLOPs of the network a search-mode forward actually computes, paired
ablations of the weight and architecture steps with the candidate optimisations of
``search_overhead_patches.py`` (patched into this process only, each checked against the original),
and torch.profiler's top operators per step. :func:`run_profile` returns the markdown section.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

import tas.prune.slicing as tas_slicing
from tas.cli import format_table
from tas.nas.interp import channel_interp
from tas.nas.arch_step import ArchStepper

from search_overhead_patches import WEIGHT_INPUTS_IN_TAS, VectorCost, check_patches, patched, source_has


def micro(fn: Callable[[], object], n: int) -> float:
    """Median milliseconds of ``fn`` over ``n`` calls (after 3 warm-up calls)."""
    for _ in range(3):
        fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def python_pieces(bench: Any, n: int) -> list[tuple[str, float]]:
    s, st = bench.supernet, bench.stepper
    metric = st.metric

    def ec_fb():
        s.expected_cost(metric).backward()

    def vc_fb():
        bench.vcost(metric).backward()

    def arch_opt():
        st.optimizer.step()

    for p in bench.a_params:
        p.grad = torch.zeros_like(p)
    rows = [
        ("Supernet.sample() (all groups + stages; 1 per forward, 2 per iteration)", micro(s.sample, n)),
        ("Supernet.expected_cost forward", micro(lambda: s.expected_cost(metric), n)),
        ("Supernet.expected_cost forward + backward", micro(ec_fb, n)),
        ("  prototype VectorCost forward + backward", micro(vc_fb, n)),
        ("ArchStepper.current_cost", micro(st.current_cost, n)),
        ("Adam step on alpha/beta", micro(arch_opt, n)),
    ]
    bench.reset_arch()
    return rows


def sampled_flops(bench: Any, n: int = 200) -> tuple[float, float]:
    """Mean FLOPs of the network a search-mode forward computes (convs at the widest sampled width of
    every group, all blocks), relative to the full network; and the mean FLOPs of a random candidate
    (what a slim network of the space costs on average) for comparison."""
    s = bench.supernet
    full_depths = {n_: st.num_blocks for n_, st in s.graph.stages.items()}
    active, cand = [], []
    for _ in range(n):
        s.sample()
        widths = {name: int(g.active.numel()) for name, g in s.groups().items()}
        active.append(s.cost.exact("flops", widths, full_depths) / s.full["flops"])
        cand.append(s.random_arch(s.generator).flops_ratio)
    return statistics.mean(active), statistics.mean(cand)


def ablations(bench: Any, repeats: int, max_seconds: float, log: Callable[[str], None]) -> list[dict]:
    """Paired, interleaved timings of the weight and arch steps with candidate optimisations."""
    s = bench.supernet
    full = s.full_arch()

    def weight(names=frozenset(), inputs_only=False):
        def fn():
            with patched(bench, set(names)):
                bench.reset_arch()
                t0 = time.perf_counter()
                bench.weight_step(inputs_only=inputs_only)
                return time.perf_counter() - t0
        return fn

    def arch(names=frozenset(), inputs_only=False):
        def fn():
            with patched(bench, set(names)):
                bench.reset_arch()
                t0 = time.perf_counter()
                bench.arch_step(inputs_only=inputs_only)
                return time.perf_counter() - t0
        return fn

    def weight_k1():
        k = s.k
        s.k = 1
        try:
            return weight()()
        finally:
            s.k = k

    def weight_hard():
        s.set_arch(full)
        try:
            t0 = time.perf_counter()
            bench.weight_step()
            return time.perf_counter() - t0
        finally:
            s.search()

    tag = " [already in tas]"
    arch_inputs = tag if source_has(ArchStepper.step, "backward(inputs=") else ""
    prefix = tag if source_has(tas_slicing.take_channels, "narrow") else ""
    w_inputs = tag if WEIGHT_INPUTS_IN_TAS else ""
    gather = tag if source_has(channel_interp, "index_select") else ""
    variants = [
        ("dense step (a)", "", bench.dense_step),
        ("weight step, as is", "W", weight()),
        ("weight step, backward(inputs=weights)" + w_inputs, "W", weight(inputs_only=True)),
        ("weight step, Gumbel weight folded into BN affine", "W", weight({"fold"})),
        ("weight step, CWI by gather instead of einsum" + gather, "W", weight({"gather"})),
        ("weight step, prefix slices instead of index_select" + prefix, "W", weight({"prefix"})),
        ("weight step, fragments fused: 1 BN + 1 conv1x1", "W", weight({"fused"})),
        ("weight step, inputs= + fold + gather + prefix", "W", weight({"fold", "gather", "prefix"}, inputs_only=True)),
        ("weight step, inputs= + fused + prefix", "W", weight({"fused", "prefix"}, inputs_only=True)),
        ("  bound: weight step with K=1 (one fragment, no CWI)", "W", weight_k1),
        ("  bound: weight step in hard mode, full arch", "W", weight_hard),
        ("arch step, as is", "A", arch()),
        ("arch step, backward(inputs=alpha,beta)" + arch_inputs, "A", arch(inputs_only=True)),
        ("arch step, vectorised expected_cost", "A", arch({"vcost"})),
        ("arch step, inputs= + fused + prefix + vcost", "A", arch({"fused", "prefix", "vcost"}, inputs_only=True)),
    ]
    usable = []
    for v in variants:  # warm-up; a prototype that no longer fits tas is left out, not fatal
        try:
            v[2]()
            v[2]()
            usable.append(v)
        except Exception as e:  # noqa: BLE001
            log(f"  ablation {v[0]!r} left out: {type(e).__name__}: {e}")
    variants = usable
    times: list[list[float]] = [[] for _ in variants]
    start = time.perf_counter()
    for r in range(repeats):
        order = list(range(len(variants)))
        order = order[r % len(order):] + order[:r % len(order)]  # rotate so no variant always goes first
        for i in order:
            times[i].append(variants[i][2]())
        if time.perf_counter() - start > max_seconds and r >= 4:
            log(f"  ablations: stopping after {r + 1} repeats (--max-seconds {max_seconds:g})")
            break
    first = {}
    for i, (_, kind, _) in enumerate(variants):
        first.setdefault(kind, i)  # the first variant of each kind is its unpatched baseline
    rows = []
    for (label, kind, _), ts in zip(variants, times):
        # ratios within a round (same machine load), then the median over rounds
        vs_dense = statistics.median([t / d for t, d in zip(ts, times[first[""]])])
        saved = None
        if kind and kind in first:
            saved = 1 - statistics.median([t / b for t, b in zip(ts, times[first[kind]])])
        rows.append({"label": label, "ms": 1e3 * statistics.median(ts), "vs_dense": vs_dense, "saved": saved, "n": len(ts)})
    return rows


def op_table(bench: Any, n: int, top: int) -> dict[str, list[tuple[str, float, int]]]:
    """torch.profiler's top operators by self CPU time, ms per step, for the dense/weight/arch steps."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for label, fn in (("dense step", bench.dense_step), ("weight step", lambda: bench.weight_step()),
                      ("arch step", lambda: bench.arch_step())):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(n):
                bench.reset_arch()
                fn()
        ev = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in ev)
        rows = [(e.key, e.self_cpu_time_total / 1e3 / n, e.count // n) for e in ev[:top]]
        rows.append(("(all operators)", total / 1e3 / n, sum(e.count for e in ev) // n))
        out[label] = rows
    return out


def run_profile(bench: Any, args, log: Callable[[str], None]) -> str:
    bench.vcost = VectorCost(bench.supernet, bench.stepper.metric)
    lines = [f"### {bench.name} ({bench.size}x{bench.size}, batch {bench.batch}, {torch.get_num_threads()} threads)", ""]
    diffs = check_patches(bench)
    act, cand = sampled_flops(bench)
    lines += [f"A search-mode forward computes every conv at the widest of the K={bench.supernet.k} sampled widths "
              f"of its groups and runs every block: on average **{act:.2f}x** the full network's FLOPs "
              f"(at tau={bench.supernet.tau:g}, alpha at its initialisation; a random architecture of the space "
              f"averages {cand:.2f}x). So the convolutions of a search forward are not more expensive than "
              "the dense ones; the overhead is in everything around them.", ""]
    pieces = python_pieces(bench, args.micro_repeats)
    lines += ["Python-side pieces (median of "
              f"{args.micro_repeats} calls):", "",
              format_table([[k, f"{v:.3f}"] for k, v in pieces], ["piece", "ms"]), ""]
    log(f"  {bench.name}: ablations")
    rows = ablations(bench, args.ablation_repeats, args.max_seconds, log)
    lines += ["Ablations (each a patch applied in this process only; medians of "
              f"{rows[0]['n']} interleaved rounds; 'vs dense' and 'saves' are medians of the per-round ratios to the "
              "dense step and to the unpatched step of the same kind, which share each round's machine load):", "",
              format_table([[r["label"], f"{r['ms']:.1f}", f"{r['vs_dense']:.2f}x",
                             "" if r["saved"] is None else f"{100 * r['saved']:+.0f} %"] for r in rows],
                           ["variant", "ms", "vs dense step", "saves"]), "",
              "Each patch against the original (max |diff| / max |value| over the logits, every parameter's "
              "gradient and every BN running statistic after one training-mode forward + backward of a float64 "
              "copy with the same Gumbel draws; for vcost over expected_cost "
              "and its gradient): "
              + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()) + ".", ""]
    log(f"  {bench.name}: torch.profiler")
    ops = op_table(bench, args.profile_steps, args.top_ops)
    for label, rows_ in ops.items():
        lines += [f"torch.profiler, {label}: top operators by self CPU time (ms per step, calls per step):", "",
                  format_table([[k, f"{v:.1f}", c] for k, v, c in rows_], ["operator", "ms/step", "calls/step"]), ""]
    return "\n".join(lines)
