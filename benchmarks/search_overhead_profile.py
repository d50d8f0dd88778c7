"""``benchmarks/search_overhead.py --profile``: where a search step's overhead goes.

The cost of the Python-side pieces of a step, the FLOPs a search-mode forward computes, paired
ablations of the still-open candidate optimisations (``fold``, ``gather``: see :data:`LEGEND`)
patched into this process only (each checked against the original), and torch.profiler's top
operators per step. The timing loop and the report are ``search_overhead.py``'s.
"""
from __future__ import annotations

import contextlib
import copy
import statistics
import time
from typing import Callable, Iterator

import torch

import tas.nas.ops as tas_ops
from search_overhead import Bench
from tas.cli import format_table
from tas.nas.interp import channel_interp
from tas.nas.profile import op_table, sampled_flops

# --profile: candidate optimisations still open, patched into this process only
# ------------------------------------------------------------------------------------------------
# Obsolete patches were deleted once their idea became tas's behaviour: backward(inputs=...) in both
# steps (Searcher._step, ArchStepper.step), prefix weight slices as views (tas.prune.slicing.take_channels),
# the fused candidate BN (tas.nas.ops.fused_candidate_bn, FUSED_BN_MAX_CHANNELS) and the vectorised
# expected cost (tas.nas.cost.ExpectedCostTable).
_ORIG_SEARCHBN_FORWARD = tas_ops.SearchBN.forward


class _ScaledBN:
    """A BN seen through ``tas.nas.ops.batch_norm_at`` with its affine parameters multiplied by ``w``
    (running statistics and ``num_batches_tracked`` are the wrapped BN's own, updated in place)."""

    def __init__(self, bn: torch.nn.BatchNorm2d, w: torch.Tensor) -> None:
        self._bn, self.weight, self.bias = bn, bn.weight * w, bn.bias * w

    def __getattr__(self, name: str):
        return getattr(self._bn, name)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # batch_norm_at(bn, x, None) calls bn(x)
        return tas_ops.batch_norm_at(self, x, x.shape[1])


def _foldable(bn) -> bool:
    act = getattr(bn, "act", None)  # w * act(BN(x)) != act(w * BN(x)) in general: fold plain BNs only
    return bn.affine and (act is None or isinstance(act, torch.nn.Identity))


def _folded_searchbn_forward(self, x: torch.Tensor) -> torch.Tensor:
    """SearchBN.forward with each fragment's Gumbel weight folded into its BN's affine parameters
    (CWI is linear and per-pixel, so ``CWI(w * BN(x)) == CWI(BN with w*gamma, w*beta)(x)``): no
    full-size multiply per fragment in the forward, and a per-channel instead of a full-size gradient
    for the weight. Only where tas mixes fragments one by one: a group tas fuses keeps tas's path."""
    g = self.group[0]
    if g.fragments is None or (self.fused and tas_ops.fusable(self.bns, g)):
        return _ORIG_SEARCHBN_FORWARD(self, x)
    width = x.shape[1]
    out = None
    for j, pos, chans, weight in g.fragments:
        bn = self.bns[j]
        scaled = weight is not None and _foldable(bn)
        if scaled:
            bn = _ScaledBN(bn, weight)
        scale = g.scale_at(chans)  # SA++ attention at the fragment's channels (None under prefix)
        if pos is None:
            y = tas_ops.batch_norm_at(bn, x, chans, scale)
        elif isinstance(pos, int):
            y = tas_ops.channel_interp(tas_ops.batch_norm_at(bn, x[:, :pos], chans, scale), width)
        else:
            y = tas_ops.channel_interp(tas_ops.batch_norm_at(bn, x.index_select(1, pos), chans, scale), width)
        if weight is not None and not scaled:
            y = y * weight
        out = y if out is None else out + y
    return out


_GATHER: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _gather_interp(x: torch.Tensor, channels: int) -> torch.Tensor:
    """CWI for the widening case (C < channels): every output channel averages 1 or 2 neighbouring
    inputs, so two index_selects and an add replace einsum's permute-copies + bmm."""
    c = x.shape[1]
    if c >= channels:
        return channel_interp(x, channels)
    key = (c, channels, str(x.device))
    if key not in _GATHER:
        lo = [(t * c) // channels for t in range(channels)]
        hi = [-((-(t + 1) * c) // channels) - 1 for t in range(channels)]
        assert all(h - l <= 1 for l, h in zip(lo, hi))
        _GATHER[key] = (torch.tensor(lo, device=x.device), torch.tensor(hi, device=x.device))
    lo, hi = _GATHER[key]
    return (x.index_select(1, lo) + x.index_select(1, hi)) * 0.5


@contextlib.contextmanager
def patched(names: set[str]) -> Iterator[None]:
    """Apply the named candidate optimisations (``fold``, ``gather``) to tas for the ``with`` body."""
    saved_fwd, saved_interp = tas_ops.SearchBN.forward, tas_ops.channel_interp
    try:
        if "fold" in names:
            tas_ops.SearchBN.forward = _folded_searchbn_forward
        if "gather" in names:
            tas_ops.channel_interp = _gather_interp
        yield
    finally:
        tas_ops.SearchBN.forward, tas_ops.channel_interp = saved_fwd, saved_interp


def _float64_copy(src) -> torch.nn.Module:
    """A float64 deep copy of a supernet (the current fragments/depth mixtures hold non-leaf tensors,
    which deepcopy refuses: set aside meanwhile)."""
    groups, stages = list(src.groups().values()), list(src.stages().values())
    saved = (src.generator, [g.fragments for g in groups], [st.mix for st in stages])
    src.generator = None
    for g in groups:
        g.fragments = None
    for st in stages:
        st.mix = None
    try:
        return copy.deepcopy(src).double()
    finally:
        src.generator = saved[0]
        for g, f in zip(groups, saved[1]):
            g.fragments = f
        for st, m in zip(stages, saved[2]):
            st.mix = m


def check_patches(bench: Bench) -> dict[str, float]:
    """How far each patch moves the logits, the gradients of every parameter (weights and alpha/beta)
    and the BN running statistics from the original (a float64 copy of the supernet, so that what is
    left is the patch and not float32 rounding; same Gumbel draws, one training-mode forward +
    backward, buffers restored after): max |difference| / max |value|."""
    s = _float64_copy(bench.supernet)
    s.generator = torch.Generator().manual_seed(1)
    x = bench.batches[0][0][:16].double()
    buffers = [b for b in s.buffers() if b.is_floating_point() or b.dtype == torch.long]
    saved = [b.clone() for b in buffers]
    params = [p for p in s.parameters() if p.requires_grad]

    def run(names: set[str]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        state = s.generator.get_state()
        with patched(names):
            y = s(x)
            grads = torch.autograd.grad(y.square().mean(), params, allow_unused=True)
        after = [b.clone() for b in buffers] + [g for g in grads if g is not None]
        s.generator.set_state(state)
        for b, v in zip(buffers, saved):
            b.copy_(v)
        return y.detach(), after

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12)) if a.numel() else 0.0

    ref, ref_after = run(set())
    out = {}
    for names in (["fold"], ["gather"], ["fold", "gather"]):
        new, new_after = run(set(names))
        out["+".join(names)] = max([rel(ref, new)] + [rel(a.double(), b.double()) for a, b in zip(ref_after, new_after)])
    return out


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


def python_pieces(bench: Bench, n: int) -> list[tuple[str, float]]:
    s, st = bench.supernet, bench.stepper
    metric = st.metric

    def ec_fb():
        s.expected_cost(metric).backward()

    for p in bench.a_params:
        p.grad = torch.zeros_like(p)
    rows = [
        ("Supernet.sample() (all groups + stages; 1 per forward, 2 per iteration)", micro(s.sample, n)),
        ("Supernet.expected_cost forward", micro(lambda: s.expected_cost(metric), n)),
        ("Supernet.expected_cost forward + backward", micro(ec_fb, n)),
        ("ArchStepper.current_cost", micro(st.current_cost, n)),
        ("Adam step on alpha/beta", micro(st.optimizer.step, n)),
    ]
    bench.reset_arch()
    return rows


def _timed(bench: Bench, step: Callable[[], None], names: frozenset[str] = frozenset()) -> Callable[[], float]:
    def fn() -> float:
        with patched(set(names)):
            bench.reset_arch()
            t0 = time.perf_counter()
            step()
            return time.perf_counter() - t0
    return fn


def _variants(bench: Bench) -> list[tuple[str, str, Callable[[], float]]]:
    """(label, kind, timed call): kind "" the dense step, "W" weight steps, "A" arch steps; the first
    of each kind is its unpatched baseline."""
    s = bench.supernet
    full = s.full_arch()

    def weight_k1() -> float:
        k, s.k = s.k, 1
        try:
            return _timed(bench, bench.weight_step)()
        finally:
            s.k = k

    def weight_hard() -> float:
        s.set_arch(full)
        try:
            t0 = time.perf_counter()
            bench.weight_step()
            return time.perf_counter() - t0
        finally:
            s.search()

    fold, gather = frozenset({"fold"}), frozenset({"gather"})
    return [
        ("dense step (a)", "", bench.dense_step),
        ("weight step, as is", "W", _timed(bench, bench.weight_step)),
        ("weight step, Gumbel weight folded into BN affine (unfused groups)", "W", _timed(bench, bench.weight_step, fold)),
        ("weight step, CWI by gather instead of einsum", "W", _timed(bench, bench.weight_step, gather)),
        ("weight step, fold + gather", "W", _timed(bench, bench.weight_step, fold | gather)),
        ("  bound: weight step with K=1 (one fragment, no CWI)", "W", weight_k1),
        ("  bound: weight step in hard mode, full arch", "W", weight_hard),
        ("arch step, as is", "A", _timed(bench, bench.arch_step)),
        ("arch step, fold + gather", "A", _timed(bench, bench.arch_step, fold | gather)),
    ]


def ablations(bench: Bench, repeats: int, max_seconds: float, log: Callable[[str], None]) -> list[dict]:
    """Paired, interleaved timings of the weight and arch steps with the candidate optimisations."""
    variants = _variants(bench)
    for _, _, fn in variants:  # warm-up
        fn()
        fn()
    times: list[list[float]] = [[] for _ in variants]
    start = time.perf_counter()
    for r in range(repeats):
        order = list(range(len(variants)))
        for i in order[r % len(order):] + order[:r % len(order)]:  # rotated: no variant always goes first
            times[i].append(variants[i][2]())
        if time.perf_counter() - start > max_seconds and r >= 4:
            log(f"  ablations: stopping after {r + 1} repeats (--max-seconds {max_seconds:g})")
            break
    first: dict[str, int] = {}
    for i, (_, kind, _) in enumerate(variants):
        first.setdefault(kind, i)
    rows = []
    for (label, kind, _), ts in zip(variants, times):
        # ratios within a round (same machine load), then the median over rounds
        vs_dense = statistics.median([t / d for t, d in zip(ts, times[first[""]])])
        saved = 1 - statistics.median([t / b for t, b in zip(ts, times[first[kind]])]) if kind else None
        rows.append({"label": label, "ms": 1e3 * statistics.median(ts), "vs_dense": vs_dense, "saved": saved, "n": len(ts)})
    return rows


def run_profile(bench: Bench, args, log: Callable[[str], None]) -> str:
    """The ``--profile`` markdown section of one model."""
    lines = [f"### {bench.name} ({bench.size}x{bench.size}, batch {bench.batch}, {torch.get_num_threads()} threads)", ""]
    diffs = check_patches(bench)
    act, cand = sampled_flops(bench.supernet)
    lines += [f"A search-mode forward computes every conv at the widest of the K={bench.supernet.k} sampled widths "
              f"of its groups and runs every block: on average **{act:.2f}x** the full network's FLOPs "
              f"(at tau={bench.supernet.tau:g}, alpha at its initialisation; a random architecture of the space "
              f"averages {cand:.2f}x). So the convolutions of a search forward are not more expensive than "
              "the dense ones; the overhead is in everything around them.", ""]
    pieces = python_pieces(bench, args.micro_repeats)
    lines += [f"Python-side pieces (median of {args.micro_repeats} calls):", "",
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
              "copy with the same Gumbel draws): " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()) + ".", ""]
    log(f"  {bench.name}: torch.profiler")

    def steps(fn: Callable[[], object]) -> Callable[[], None]:
        return lambda: (bench.reset_arch(), fn())

    ops = op_table({"dense step": bench.dense_step, "weight step": steps(bench.weight_step),
                    "arch step": steps(bench.arch_step)}, args.profile_steps, args.top_ops)
    for label, op_rows in ops.items():
        lines += [f"torch.profiler, {label}: top operators by self CPU time (ms per step, calls per step):", "",
                  format_table([[r.name, f"{r.ms_per_step:.1f}", r.calls_per_step] for r in op_rows],
                               ["operator", "ms/step", "calls/step"]), ""]
    return "\n".join(lines)


LEGEND = [
    "The ablations patch candidate optimisations into this process only (tas is not edited); each is checked "
    "against the original below. Only ideas tas does not have yet are measured: `backward(inputs=...)` in both "
    "steps, prefix slices as views, the fused candidate BN (groups of at most "
    f"{tas_ops.FUSED_BN_MAX_CHANNELS} channels) and the vectorised expected cost are tas's behaviour now, "
    "so *as is* includes them.",
    "",
    "* **fold** -- each fragment's Gumbel weight multiplies its BN's gamma and beta instead of the BN output "
    "(`CWI(w * BN(x)) == BN_{w*gamma, w*beta}(x)` stretched, CWI being linear): one full-size multiply per fragment "
    "fewer forward, and a per-channel instead of a full-size gradient for the weight. Applies to the groups tas "
    "does not fuse (wider than the fused-BN threshold).",
    "* **gather** -- CWI widening C -> C' (C < C') as two `index_select`s and an average (each output channel "
    "averages one or two neighbours) instead of `einsum('oc,bchw->bohw')` (permute copies + bmm); on the unfused "
    "path (the fused BN builds its CWI into the 1x1 conv).",
    "* **bounds** -- K=1 (one fragment per group: the widest, one BN, no CWI, no mixing) and hard mode at the full "
    "architecture (the wrappers with nothing to mix) show what the fragment machinery costs in total.",
]
