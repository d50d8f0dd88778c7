"""What does a TAS search iteration cost next to a dense training step of the same backbone?

For each model (default ``cifar_resnet20`` at 3x32x32, batch 64, and timm ``resnet18`` at 3x64x64,
batch 32; 10 classes, random weights and data) this times, in one process and *interleaved* (the
order of the two measurements alternates every repeat, so drift and other load on the machine hit
both alike), after warm-up:

(a) **dense step** -- the plain backbone: forward + cross-entropy + backward + SGD step on one batch;
(b) **search iteration** -- exactly what ``tas.searching.search`` does per step: the *weight step*
    (supernet in search mode, CE, backward, SGD on ``Supernet.weight_parameters()``) on one batch,
    then the *architecture step* ``ArchStepper.step`` (CE + cost loss, Adam on alpha/beta) on another
    batch of the same size B. (b) is timed as one block; the two halves are timestamps inside it.

Two ratios are reported, because "overhead" can mean either:

* **per iteration**  = (b) / (a): one search iteration against one dense step;
* **per sample**     = ((b) / 2B) / ((a) / B) = (b) / (2a): a search iteration processes 2B images
  (B through the weight step, B through the architecture step), a dense step B.

Optimisers use ``SearchConfig``'s defaults (SGD lr 0.05, momentum 0.9, nesterov, wd 5e-4 for the
weights -- the dense step uses the same -- and Adam lr 0.05 for alpha/beta, FLOPs target 0.5).
tau is fixed (default 5.0, the start of the cosine schedule). The architecture logits are reset to
their initial values before every search iteration (``--no-reset-arch`` lets them drift), so every
repeat measures the same start-of-search distribution: near-uniform over the widths, which is the
widest (most expensive) phase of a search -- as the budget pulls alpha to narrower widths the
sampled networks and the iteration get cheaper.

    python benchmarks/search_overhead.py                 # the table, < 5 min on 2 cores -> docs/benchmarks_search_overhead.md
    python benchmarks/search_overhead.py --quick         # ~1 min smoke run
    python benchmarks/search_overhead.py --profile       # + where the overhead goes (ablations, op table)
    python benchmarks/search_overhead.py --models cifar_resnet56:32:64 resnet50:96:16 --threads 2 1

``--profile`` adds, per model: the cost of the Python-side pieces of a step (``Supernet.sample``,
``expected_cost``, ``current_cost``), the FLOPs of the network a search-mode forward actually
computes, paired ablations of the weight and architecture steps with candidate optimisations
applied *in this process only* by patching (tas itself is not changed; each patch is checked to give
the same output as the original; the patches live in ``search_overhead_patches.py``), and
torch.profiler's top operators per step.

Not a test: nothing here asserts; the markdown is the result.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import timm
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tas  # noqa: E402,F401  (registers cifar_resnet* with timm)
import tas.ops as tas_ops  # noqa: E402
from tas.checkpoint import atomic_write_bytes  # noqa: E402
from tas.cli import format_table  # noqa: E402
from tas.cost import cost_loss  # noqa: E402
from tas.interp import channel_interp  # noqa: E402
from tas import searching  # noqa: E402
from tas.searching import ArchStepper, SearchConfig  # noqa: E402
from tas.supernet import create_supernet  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from search_overhead_patches import LEGEND, VectorCost, check_patches, patched  # noqa: E402

DEFAULT_MODELS = ["cifar_resnet20:32:64", "resnet18:64:32"]
NOISY = 0.3  # a row whose paired-ratio IQR exceeds this fraction of its median is flagged
NUM_CLASSES = 10


def parse_spec(spec: str) -> tuple[str, int, int]:
    """``name[:size[:batch]]``; cifar_* default to 32 px / batch 64, everything else 64 px / batch 32."""
    parts = spec.split(":")
    name = parts[0]
    size, batch = (32, 64) if name.startswith("cifar_") else (64, 32)
    if len(parts) > 1 and parts[1]:
        size = int(parts[1])
    if len(parts) > 2 and parts[2]:
        batch = int(parts[2])
    return name, size, batch


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def quartiles(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 4:
        return min(xs), max(xs)
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


# ------------------------------------------------------------------------------------------------
# The two measured workloads
# ------------------------------------------------------------------------------------------------
class Bench:
    """A dense backbone and its supernet (same initial weights), their optimisers and fixed batches."""

    def __init__(self, name: str, size: int, batch: int, seed: int = 0, tau: float = 5.0,
                 reset_arch: bool = True) -> None:
        cfg = SearchConfig()
        cfg.validate()
        self.name, self.size, self.batch, self.reset = name, size, batch, reset_arch
        torch.manual_seed(seed)
        self.dense = timm.create_model(name, num_classes=NUM_CLASSES, in_chans=3).train()
        self.supernet = create_supernet(copy.deepcopy(self.dense), input_size=(3, size, size), model_name=name).train()
        self.supernet.tau = tau
        self.supernet.generator = torch.Generator().manual_seed(seed)
        g = torch.Generator().manual_seed(seed + 1)
        self.batches = [(torch.randn(batch, 3, size, size, generator=g),
                         torch.randint(0, NUM_CLASSES, (batch,), generator=g)) for _ in range(2)]
        sgd = dict(lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)
        self.d_opt = torch.optim.SGD(self.dense.parameters(), **sgd)
        self.w_params = list(self.supernet.weight_parameters())
        self.a_params = list(self.supernet.arch_parameters())
        self.w_opt = torch.optim.SGD(self.w_params, **sgd)
        self.stepper = ArchStepper(self.supernet, cfg.metric, cfg.ratio, cfg.tolerance, cfg.cost_weight,
                                   cfg.arch_lr, cfg.arch_weight_decay)
        self.arch0 = [p.detach().clone() for p in self.a_params]

    def reset_arch(self) -> None:
        if self.reset:
            with torch.no_grad():
                for p, p0 in zip(self.a_params, self.arch0):
                    p.copy_(p0)

    # (a)
    def dense_step(self) -> float:
        x, y = self.batches[0]
        t0 = time.perf_counter()
        loss = F.cross_entropy(self.dense(x), y)
        check(loss.item(), "dense loss")
        self.d_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.d_opt.step()
        return time.perf_counter() - t0

    # (b), as tas.searching.search does it
    def weight_step(self, inputs_only: bool = False) -> None:
        x, y = self.batches[0]
        loss = F.cross_entropy(self.supernet(x), y)
        check(loss.item(), "weight loss")
        self.w_opt.zero_grad(set_to_none=True)
        if inputs_only or WEIGHT_INPUTS_IN_TAS:  # no gradients for the Gumbel mixing weights / alpha
            loss.backward(inputs=self.w_params)
        else:
            loss.backward()
        self.w_opt.step()

    def arch_step(self, inputs_only: bool = False) -> None:
        x, y = self.batches[1]
        if not inputs_only:
            self.stepper.step(x, y)
            return
        # ArchStepper.step with one change: backward(inputs=alpha/beta) skips the weight gradients
        # (conv/BN/fc weight grads and the index_select scatters) nobody uses.
        st, s = self.stepper, self.supernet
        ce = F.cross_entropy(s(x), y)
        expected = s.expected_cost(st.metric)
        lc = cost_loss(expected, st.current_cost(), st.target, st.tolerance, st.full)
        loss = ce + st.cost_weight * lc.to(ce.device)
        check(loss.item(), "arch loss")
        st.optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=self.a_params)
        st.optimizer.step()

    def search_iter(self) -> tuple[float, float]:
        """(weight step seconds, arch step seconds) of one full search iteration."""
        self.reset_arch()
        t0 = time.perf_counter()
        self.weight_step()
        t1 = time.perf_counter()
        self.arch_step()
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1


def check(value: float, what: str) -> None:
    if not math.isfinite(value):
        raise RuntimeError(f"{what} is {value}; the benchmark's random training diverged")


def run_main(bench: Bench, warmup: int, repeats: int, max_seconds: float, log: Callable[[str], None]) -> dict:
    dense, wstep, astep = [], [], []
    start = time.perf_counter()
    for r in range(warmup + repeats):
        if r % 2 == 0:
            d = bench.dense_step()
            w, a = bench.search_iter()
        else:
            w, a = bench.search_iter()
            d = bench.dense_step()
        if r >= warmup:
            dense.append(d)
            wstep.append(w)
            astep.append(a)
            if time.perf_counter() - start > max_seconds and len(dense) >= 5:
                log(f"  {bench.name}: stopping after {len(dense)} repeats (--max-seconds {max_seconds:g})")
                break
    search = [w + a for w, a in zip(wstep, astep)]
    paired = [s / d for s, d in zip(search, dense)]
    ms = lambda xs: 1e3 * median(xs)  # noqa: E731
    a_ms, b_ms = ms(dense), ms(search)
    return {"model": bench.name, "size": bench.size, "batch": bench.batch, "threads": torch.get_num_threads(),
            "repeats": len(dense), "dense_ms": a_ms, "weight_ms": ms(wstep), "arch_ms": ms(astep), "search_ms": b_ms,
            "per_iter": b_ms / a_ms, "paired": median(paired), "per_iter_iqr": quartiles(paired),
            "per_sample": b_ms / (2 * a_ms),
            "weight_ratio": ms(wstep) / a_ms, "arch_ratio": ms(astep) / a_ms,
            "seconds": time.perf_counter() - start}


def micro(fn: Callable[[], object], n: int) -> float:
    """Median milliseconds of ``fn`` over ``n`` calls (after 3 warm-up calls)."""
    for _ in range(3):
        fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * median(ts)


def python_pieces(bench: Bench, n: int) -> list[tuple[str, float]]:
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


def sampled_flops(bench: Bench, n: int = 200) -> tuple[float, float]:
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


def _source_has(fn: Callable, text: str) -> bool:
    import inspect
    try:
        return text in inspect.getsource(fn)
    except (OSError, TypeError):
        return False


#: whether tas's own weight step back-propagates into the weights only (then "as is" does too)
WEIGHT_INPUTS_IN_TAS = _source_has(searching._search, ".backward(inputs=")


def ablations(bench: Bench, repeats: int, max_seconds: float, log: Callable[[str], None]) -> list[dict]:
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
    arch_inputs = tag if _source_has(ArchStepper.step, "backward(inputs=") else ""
    prefix = tag if _source_has(tas_ops._take, "narrow") else ""
    w_inputs = tag if WEIGHT_INPUTS_IN_TAS else ""
    gather = tag if _source_has(channel_interp, "index_select") else ""
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
        vs_dense = median([t / d for t, d in zip(ts, times[first[""]])])
        saved = None
        if kind and kind in first:
            saved = 1 - median([t / b for t, b in zip(ts, times[first[kind]])])
        rows.append({"label": label, "ms": 1e3 * median(ts), "vs_dense": vs_dense, "saved": saved, "n": len(ts)})
    return rows


def op_table(bench: Bench, n: int, top: int) -> dict[str, list[tuple[str, float, int]]]:
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


def run_profile(bench: Bench, args, log: Callable[[str], None]) -> str:
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


def render(results: list[dict], profiles: list[str], args, argv: list[str], elapsed: float) -> str:
    rows = []
    for r in results:
        lo, hi = r["per_iter_iqr"]
        noisy = (hi - lo) > NOISY * r["paired"]
        rows.append([r["model"], f"{r['size']}x{r['size']}", r["batch"], r["threads"], f"{r['repeats']}{' †' if noisy else ''}",
                     f"{r['dense_ms']:.1f}", f"{r['weight_ms']:.1f} ({r['weight_ratio']:.2f}x)",
                     f"{r['arch_ms']:.1f} ({r['arch_ratio']:.2f}x)", f"{r['search_ms']:.1f}",
                     f"**{r['per_iter']:.2f}x**", f"{r['paired']:.2f}x ({lo:.2f}-{hi:.2f})",
                     f"**{r['per_sample']:.2f}x**", f"{r['paired'] / 2:.2f}x"])
    header = ["model", "input", "B", "threads", "repeats", "(a) dense step ms", "weight step ms (/a)",
              "arch step ms (/a)", "(b) search iter ms", "per iteration (b)/(a)", "paired (b)/(a) [IQR]",
              "per sample (b)/(2a)", "paired /2"]
    table = format_table(rows, header)
    cmd = "python benchmarks/search_overhead.py" + ("" if not argv else " " + " ".join(argv))
    cpu = platform.processor() or platform.machine()
    try:
        load = ("1-min load average %.1f at the start, %.1f at the end (other processes share the cores: "
                "compare the paired columns)" % (args.load_start, os.getloadavg()[0]))
    except (OSError, AttributeError):
        load = "load average unknown"
    text = [
        "# Search overhead: a TAS search iteration vs a dense training step",
        "",
        "Generated by `benchmarks/search_overhead.py` (reproduce with the command below; see its docstring for "
        "exactly what is timed).",
        "",
        "```",
        cmd,
        "```",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({cpu}, {platform.system()}), torch {torch.__version__}, "
        f"timm {timm.__version__}, Python {platform.python_version()}; `torch.set_num_threads` as in the "
        f"threads column; {load}. Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {elapsed / 60:.1f} min.",
        "",
        "* **(a) dense step**: the plain backbone, forward + cross-entropy + backward + SGD step on one batch of B.",
        "* **(b) search iteration**: the weight step (supernet in search mode, CE, backward, SGD on the weights) on "
        "one batch of B, then `ArchStepper.step` (CE + cost loss, backward, Adam on alpha/beta) on another batch of B. "
        "Weight and arch columns are the two halves of (b) (their medians need not add up to (b)'s).",
        "* **per iteration** = (b)/(a): one search iteration against one dense step, as the ratio of the two medians. "
        "*paired* is the median (and quartiles) of the per-repeat ratios: each repeat's (a) and (b) run back to "
        "back and share that moment's machine load, so on a busy machine it is the steadier estimate.",
        "* **per sample** = ((b)/2B) / ((a)/B) = (b)/(2a): time per training image, since a search iteration pushes "
        "2B images through the network (B in each step) and a dense step B; *paired /2* is the same from the "
        "paired ratio.",
        f"* Medians after {args.warmup} warm-up repeats; (a) and (b) interleaved, order alternating. "
        f"tau = {args.tau:g}; architecture logits "
        + ("reset to their initialisation before every iteration (the near-uniform, widest phase of a search)."
           if not args.no_reset_arch else "left to drift with the arch steps."),
        "",
        table,
        "",
    ]
    noisy = [r for r in results if (r["per_iter_iqr"][1] - r["per_iter_iqr"][0]) > NOISY * r["paired"]]
    if noisy:
        text += [f"† the per-repeat ratios of this row spread widely (interquartile range over {NOISY:.0%} of their "
                 "median): the load other processes put on the machine changed during it, which also cut its repeats "
                 "short (`--max-seconds`). Absolute times and the ratio of medians of such a row mean little; the "
                 "paired column is the better estimate, and a rerun on a quiet machine the real fix.", ""]
    if results:
        def verdict(key: str, scale: float = 1.0) -> str:
            vals = [r[key] / scale for r in results]
            n_ok = sum(v <= 2.0 for v in vals)
            return f"{n_ok}/{len(vals)} rows within 2.0x (worst {max(vals):.2f}x)"

        text += ["Against a 2.0x target: **per iteration** " + verdict("per_iter") + " [paired: " + verdict("paired")
                 + "]; **per sample** " + verdict("per_sample") + " [paired: " + verdict("paired", 2.0) + "].", ""]
    if profiles:
        text += ["## Where the overhead goes (`--profile`)", "", *LEGEND, ""] + profiles
    return "\n".join(text).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, metavar="NAME[:SIZE[:BATCH]]",
                   help="timm names (cifar_* too), optionally with input size and batch "
                        f"(default {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per model (default 40; --quick 8)")
    p.add_argument("--warmup", type=int, default=None, help="untimed repeats first (default 3; --quick 2)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop a model's repeats (and its ablations) after this long, at least 5 repeats "
                        "(default 100; --quick 20), so a loaded machine still finishes in time")
    p.add_argument("--threads", type=int, nargs="+", default=[2], help="torch threads; several give a row each (default 2)")
    p.add_argument("--tau", type=float, default=5.0, help="Gumbel temperature (default 5.0, the schedule's start)")
    p.add_argument("--no-reset-arch", action="store_true", help="let alpha/beta drift instead of resetting them")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="few repeats: a smoke run of about a minute")
    p.add_argument("--profile", action="store_true",
                   help="also break the overhead down: Python pieces, ablations with candidate optimisations, op table")
    p.add_argument("--profile-threads", type=int, default=None,
                   help="--profile: profile the row with this many threads (default: the first of --threads)")
    p.add_argument("--ablation-repeats", type=int, default=None, help="--profile: repeats of each ablation (default 15; --quick 3)")
    p.add_argument("--micro-repeats", type=int, default=200, help="--profile: calls per Python-piece timing")
    p.add_argument("--profile-steps", type=int, default=None, help="--profile: steps under torch.profiler (default 5; --quick 2)")
    p.add_argument("--top-ops", type=int, default=12, help="--profile: operators listed per step")
    p.add_argument("--output", default=str(REPO / "docs" / "benchmarks_search_overhead.md"),
                   help="markdown file to write ('-' to only print)")
    args = p.parse_args(argv)
    if args.profile_threads is not None and args.profile_threads not in args.threads:
        p.error("--profile-threads must be one of --threads")
    q = args.quick
    args.repeats = args.repeats or (8 if q else 40)
    args.warmup = args.warmup if args.warmup is not None else (2 if q else 3)
    args.max_seconds = args.max_seconds or (20.0 if q else 100.0)
    args.ablation_repeats = args.ablation_repeats or (3 if q else 15)
    args.profile_steps = args.profile_steps or (2 if q else 5)
    if q:
        args.micro_repeats = min(args.micro_repeats, 30)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        args.load_start = os.getloadavg()[0]
    except OSError:
        args.load_start = float("nan")
    t0 = time.perf_counter()
    results, profiles = [], []
    for spec in args.models:
        name, size, batch = parse_spec(spec)
        for threads in args.threads:
            torch.set_num_threads(threads)
            log(f"{name} {size}x{size} batch {batch}, {threads} threads: building")
            bench = Bench(name, size, batch, seed=args.seed, tau=args.tau, reset_arch=not args.no_reset_arch)
            log(f"  timing {args.warmup} + {args.repeats} repeats")
            r = run_main(bench, args.warmup, args.repeats, args.max_seconds, log)
            log(f"  dense {r['dense_ms']:.1f} ms, search {r['search_ms']:.1f} ms "
                f"(weight {r['weight_ms']:.1f}, arch {r['arch_ms']:.1f}): per iteration {r['per_iter']:.2f}x, "
                f"per sample {r['per_sample']:.2f}x")
            results.append(r)
            if args.profile and threads == (args.profile_threads or args.threads[0]):
                profiles.append(run_profile(bench, args, log))
    text = render(results, profiles, args, argv, time.perf_counter() - t0)
    print(text)
    if args.output != "-":
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.output, text.encode())
        log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
