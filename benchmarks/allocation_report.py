"""The allocation benchmark's analysis and report: paired differences against the trivial rule,
accuracy at equal measured latency, the search's own landing, where the FLOPs go, and the markdown
``benchmarks/allocation.py`` writes."""
from __future__ import annotations

import os
import platform
import statistics
from datetime import datetime, timezone
from pathlib import Path

import torch

import compare
import tas
from allocation_methods import ARCH_ONLY, BORROWERS, DERIVED, REFERENCES, SEARCHES, VARIANTS
from benchstats import interp_at, paired_differences
from compare import LATENCY_METHOD
from tas.cli import format_table
from tas.prune.flops import layer_macs
from tas.prune.materialize import build_slim

REPO = Path(__file__).resolve().parents[1]
#: a report's hand-written analysis starts at this line; regenerating the report keeps it
NOTES = "<!-- notes: kept when the report is regenerated -->"


# -- analysis ---------------------------------------------------------------------------------------
def _cells(results: dict, model: str, method: str, ratio: float | None = None) -> list[dict]:
    return [c for c in results["cells"].values()
            if c["model"] == model and c["method"] == method and (ratio is None or c["ratio"] == ratio)]


def paired_rows(results: dict, models: list[str], ratios: list[float], methods: list[str],
                key: str = "top1") -> list[dict]:
    """Per model, FLOPs ratio and method: ``key`` (test ``top1`` or ``val_top1``) − the reference's per
    seed, mean and 95 % CI."""
    rows = []
    for model in models:
        for r in ratios:
            ref = next((m for m in REFERENCES if _cells(results, model, m, r)), None)
            if ref is None:
                continue
            base = {c["seed"]: c[key] for c in _cells(results, model, ref, r)}
            for meth in methods:
                if meth in (ref, LATENCY_METHOD):
                    continue
                d = paired_differences({c["seed"]: c[key] for c in _cells(results, model, meth, r)}, base)
                if d is not None:
                    rows.append({"model": model, "ratio": r, "method": meth, "reference": ref, **d})
    return rows


def latency_curves(results: dict, model: str, methods: list[str]) -> dict[str, list[tuple[float, float, float]]]:
    """Per method: (mean measured latency / the teacher's, mean top-1, target) per target, by latency."""
    full = results["teachers"][model].get("latency_ms")
    curves = {}
    for meth in methods:
        by_target: dict[float, list[dict]] = {}
        for c in _cells(results, model, meth):
            if "latency_ms" in c and full:
                by_target.setdefault(c["ratio"], []).append(c)
        curves[meth] = sorted((statistics.mean(c["latency_ms"] / full for c in cs),
                               statistics.mean(c["top1"] for c in cs), r) for r, cs in by_target.items())
    return curves


#: the trivial rule's curve at equal latency: ``uniform``'s points and ``uniform-depth``'s together (the
#: rule the issue names: width scaling, and depth with it where width alone cannot go)
TRIVIAL_RULE = "uniform rule"


def equal_latency_rows(results: dict, models: list[str], methods: list[str]) -> list[dict]:
    """For each TAS point, every other method's top-1 interpolated at the latency TAS measured; with
    both ``uniform`` and ``uniform-depth`` among ``methods``, also on their joint curve
    (:data:`TRIVIAL_RULE`), which spans the latencies neither reaches alone."""
    rows = []
    for model in models:
        if "latency_ms" not in results["teachers"].get(model, {}):
            continue
        curves = latency_curves(results, model, methods)
        if all(curves.get(m) for m in REFERENCES):
            curves[TRIVIAL_RULE] = sorted(pt for m in REFERENCES for pt in curves[m])
        for tas_method in ("tas", LATENCY_METHOD):
            for lat, top1, target in curves.get(tas_method, []):
                others = {m: interp_at(pts, lat) for m, pts in curves.items() if not m.startswith("tas")}
                known = {m: v for m, v in others.items() if v is not None}
                best = max(known, key=known.get) if known else None
                rows.append({"model": model, "method": tas_method, "target": target, "latency_ratio": lat,
                             "top1": top1, "others": others, "best": best,
                             "lead": None if best is None else top1 - known[best]})
    return rows


def search_diagnostics(metrics: dict) -> tuple[float | None, int | None]:
    """(pre-decode argmax ratio, decode moves) from a search's metrics.json, when it reports them.

    Read defensively: the keys come from the search's cost controller (issue 14) and may be absent
    in older runs; ``projection_steps`` is the older name of the decode's moves.
    """
    ratio = next((metrics[k] for k in ("pre_decode_ratio", "argmax_ratio", "pre_decode_argmax_ratio")
                  if isinstance(metrics.get(k), (int, float))), None)
    if ratio is None:
        ratio = next((v for k, v in sorted(metrics.items()) if "argmax" in k and "ratio" in k
                      and isinstance(v, (int, float)) and not isinstance(v, bool)), None)
    moves = next((metrics[k] for k in ("decode_moves", "projection_steps") if isinstance(metrics.get(k), int)), None)
    return ratio, moves


@torch.no_grad()
def stage_flops(arch: "tas.Arch") -> dict[str, float]:
    """Fraction of the *full* network's FLOPs each top-level module of ``arch``'s slim network spends
    (stem, layer1…, head): where a method puts the budget it keeps."""
    slim, spent = build_slim(arch).eval(), {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, top=name.split(".")[0]:
                                     spent.__setitem__(top, spent.get(top, 0) + layer_macs(mod, inp[0], out)))
             for name, m in slim.named_modules() if name]
    try:
        slim(torch.zeros(1, *arch.input_size))
    finally:
        for h in hooks:
            h.remove()
    return {k: v / arch.full_flops for k, v in spent.items() if v}


def _in_stage(group: str, stage: str, first: bool, depth: int) -> bool:
    """Whether ``group`` belongs to ``stage`` and is computed: the stage's stream group, its kept blocks'
    inner groups (``<stage>.<block>.…``), and for the first stage the stem (its stream)."""
    if group == "stem":
        return first
    if group == stage:
        return True
    if not group.startswith(stage + "."):  # stage names may hold dots themselves (EfficientNet's blocks.3)
        return False
    block = group[len(stage) + 1:].split(".")[0]
    return not block.isdigit() or int(block) < depth


def stage_rows(results: dict, models: list[str], methods: list[str]) -> list[list]:
    """Per model, ratio and method (mean over seeds): blocks kept per stage, mean width kept per
    stage (fraction of the stage's channels over its groups), and each part's share of the full FLOPs."""
    rows = []
    for model in models:
        for r in sorted({c["ratio"] for c in results["cells"].values() if c["model"] == model}, reverse=True):
            for meth in methods:
                archs = [tas.Arch.from_json(Path(c["onnx"]).parent / "search" / "arch.json")  # the cell's own dir
                         for c in _cells(results, model, meth, r)]
                if not archs:
                    continue
                stages = list(archs[0].stages)
                depth = [statistics.mean(a.stages[st]["depth"] for a in archs) for st in stages]
                width = [statistics.mean(statistics.mean(g["width"] / g["channels"] for n, g in a.groups.items()
                                                         if _in_stage(n, st, st == stages[0], a.stages[st]["depth"]))
                                         for a in archs) for st in stages]
                shares = [stage_flops(a) for a in archs]
                parts = list(dict.fromkeys(k for sh in shares for k in sh))  # in forward order
                flops = {k: statistics.mean(sh.get(k, 0.0) for sh in shares) for k in parts}
                cs = _cells(results, model, meth, r)
                inh = [c["inherited_val_top1"] for c in cs if "inherited_val_top1" in c]
                rows.append([model, f"{r:.2f}", meth, len(archs), " / ".join(f"{d:.1f}" for d in depth),
                             " / ".join(f"{w:.2f}" for w in width), " · ".join(f"{k} {v:.3f}" for k, v in flops.items()),
                             f"{statistics.mean(inh):.2f}" if inh else "–",
                             f"{statistics.mean(c['val_top1'] for c in cs):.2f}"])
    return rows


def tas_rows(results: dict, models: list[str]) -> list[list]:
    rows = []
    for c in sorted(results["cells"].values(), key=lambda c: (c["model"], c["method"], -c["ratio"], c["seed"])):
        if c["model"] not in models or c["method"] not in SEARCHES:
            continue
        sm = c.get("search_metrics", {})
        ratio, moves = search_diagnostics(sm)
        low, high = sm.get("band", (None, None))  # the search's own band (metrics.json)
        band = None if ratio is None or low is None else low - 1e-9 <= ratio <= high + 1e-9
        rows.append([c["model"], c["method"], f"{c['ratio']:.2f}", c["seed"],
                     "–" if ratio is None else f"{ratio:.3f}", "–" if band is None else ("yes" if band else "no"),
                     "–" if moves is None else moves, f"{c['flops_ratio']:.3f}"])
    return rows


# -- report -----------------------------------------------------------------------------------------
def _pm(d: dict) -> str:
    if d["n"] < 2:
        return f"{d['mean']:+.2f} (1 seed)"
    return f"{d['mean']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}]"


def _shown(path: str) -> Path:
    out = Path(path).resolve()
    return out.relative_to(REPO) if out.is_relative_to(REPO) else out


def _where(a) -> str:
    """Where the cells trained when not on this process's CPU threads alone."""
    jobs = getattr(a, "jobs", 1)
    gpu = (f" on {torch.cuda.get_device_name()}" if getattr(a, "device", "cpu") != "cpu" and torch.cuda.is_available()
           else "")
    return (f" per process, training {jobs} cells at a time" if jobs > 1 else "") + gpu


def render(args, results: dict, png: Path | None, why: str | None, elapsed: float) -> str:
    a = args
    ratios = sorted(set(a.ratios) | set(a.latency_ratios if LATENCY_METHOD in a.methods else []), reverse=True)
    rows, _ = compare.summarize(results, a.models, ratios, list(a.methods))
    paired = paired_rows(results, a.models, a.ratios, list(a.methods))
    on_val = {(p["model"], p["ratio"], p["method"]): p for p in paired_rows(results, a.models, a.ratios, list(a.methods),
                                                                            key="val_top1")}
    eq = equal_latency_rows(results, a.models, list(a.methods))
    diag = tas_rows(results, a.models)
    teachers = [[m, t["epochs"], t["stopped"], ", ".join(f"{e}: {v:.2f}" for e, v in t["plateau"]),
                 f"{t['val_top1']:.2f}", f"{t['top1']:.2f}"]
                for m, t in results["teachers"].items() if m in a.models and "plateau" in t]
    methods_eq = [m for m in a.methods if not m.startswith("tas")]
    methods_eq += [TRIVIAL_RULE] if any(TRIVIAL_RULE in e["others"] for e in eq) else []
    with_ratio = [r for r in diag if r[4] != "–"]
    with_moves = [r for r in diag if r[6] != "–"]
    quick = (f"*`--quick` checks the machinery only: a teacher of at most {a.teacher_cap} epochs on {a.limit} "
             "images, one ratio, two seeds. Its differences say nothing about the methods.*"
             if a.mode == "quick" else "")
    lines = [
        "# Where allocation matters: TAS against uniform scaling at low FLOPs (issue 14)", "",
        f"Generated by `{a.command}` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC ({elapsed / 60:.1f} min this invocation; cells cached in "
        f"`{_shown(a.output)}/results.json`): {os.cpu_count()} CPU cores ({platform.machine()}, shared, 1-min "
        f"load {a.load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end), torch {torch.__version__}, "
        f"{a.threads} thread(s){_where(a)}.", "",
        f"**Setup.** Fashion-MNIST at 28 px: {a.limit} class-balanced training images and a held-out, "
        f"class-balanced validation split of {a.val} training images (every run evaluates on it; nothing is "
        f"tuned on the test set); reported top-1 is on {a.test_limit or 10000} class-balanced test images. Teacher: cosine runs of "
        f"{a.teacher_epochs}, {2 * a.teacher_epochs}, … epochs until doubling gains < {a.plateau_delta} val "
        f"points (cap {a.teacher_cap}). Every method then gets **{a.budget} epochs**: `tas`/`tas-latency` search "
        f"{a.search_epochs} and distil {a.budget - a.search_epochs}; the baselines distil {a.budget} "
        f"(KD α 0.9 T 4, SGD lr {a.lr}, cosine, batch {a.batch_size}). Seeds {a.seeds}.", "",
        *([f"Variants: `{ARCH_ONLY}` is the same seed's `tas` architecture distilled for all {a.budget} epochs "
           "(the architecture without the search's epoch); `tas-width` searches widths only (every block kept); "
           "`tas-fill` aims the search at the target and decodes up to it (`--fill-budget`); `tas-init` distils "
           "the same seed's `tas` architecture from the search's own weights (`train.py --init search`); `tas-kd` "
           "searches with a KD weight step (`--kd-alpha 0.9`) and distils from the search's weights; `tas-filters` "
           "orders the teacher's channels by the l1 baseline's criterion (`--channel-order filters`), "
           "`tas-width-filters` the same with widths only; `tas-arch2` takes two architecture steps per weight step; "
           "`tas-akd` scores the architecture step by the distillation's KD objective on the teacher's soft "
           "targets (`--arch-kd-alpha 0.9`); `tas-half` searches half as long and distils for the rest of the "
           "budget (`--epochs` in fractions); `tas-fine` searches the `cifar_resnet_fine` space and `tas-w4` "
           "the default depth rule with widths in multiples of 4 (`benchmarks/spaces/cifar_resnet_w4.yaml`); "
           "`tas-depth` keeps the same seed's `tas` depths and scales the widths uniformly at them, channels "
           "by filter L1 (the `l1` rule at TAS's depths; charged the search's epoch)."
           " Every other method inherits both weights and channels from the teacher; the search only "
           "chooses the architecture.", ""] if {*BORROWERS, *DERIVED, *VARIANTS} & set(a.methods) else []),
        *([quick, ""] if quick else []),
        "## Teachers", "",
        format_table(teachers, ["model", "epochs", "stopped by", "val top-1 per run length", "val top-1",
                                "test top-1"]) if teachers else "(none)", "",
        "## Accuracy, FLOPs, latency", "",
        "*FLOPs target*: for `tas-latency` the measured-latency fraction it searched for. *ORT ms*: all "
        "networks of a model timed in one interleaved run.", "",
        format_table(rows, compare.HEADER), "",
        *(["Skipped (unreachable): " + "; ".join(f"`{k}`: {v}" for k, v in sorted(results["skipped"].items())), ""]
          if results.get("skipped") else []),
        "## Paired differences against the trivial rule", "",
        "Per seed: method top-1 − reference top-1 (same seed: same data order); mean and 95 % t interval "
        "over the seeds (points). Reference: `uniform`, or `uniform-depth` where width-only scaling cannot "
        "reach the ratio. *val*: the same on the held-out validation split (what any choice here is made on). "
        "On splits of a few thousand images a paired difference carries ~1 point of evaluation noise: "
        "`benchmarks/rescore.py` scores every network again on all 10 000 test images and 20 000 unused "
        "training images.", "",
        format_table([[p["model"], f"{p['ratio']:.2f}", p["method"], p["reference"], p["n"], _pm(p),
                       "–" if p["lo"] is None else ("yes" if p["lo"] > 0 or p["hi"] < 0 else "no"),
                       _pm(on_val[p["model"], p["ratio"], p["method"]])]
                      for p in paired],
                     ["model", "FLOPs target", "method", "reference", "seeds", "mean Δ test top-1 [95 % CI]",
                      "CI excludes 0", "mean Δ val top-1 [95 % CI]"]) if paired else "(no pairs)", "",
        "## Accuracy at equal measured latency", "",
        "For each TAS point (mean over seeds), every baseline's mean top-1 interpolated along its own "
        "accuracy-vs-measured-latency curve at that latency ('–': outside the baseline's measured range).", "",
        format_table([[e["model"], e["method"], f"{e['target']:.2f}", f"{e['latency_ratio']:.3f}", f"{e['top1']:.2f}",
                       *("–" if e["others"].get(m) is None else f"{e['others'][m]:.2f}" for m in methods_eq),
                       "–" if e["lead"] is None else f"{e['lead']:+.2f} vs {e['best']}"] for e in eq],
                     ["model", "TAS", "target", "latency ratio", "top-1", *methods_eq, "lead over the best"])
        if eq else "(no latency measurements)", "",
        "## TAS searches: does the search land in the band by itself?", "",
        f"Pre-decode argmax ratio (in band: within the search's band [target·(1 − tolerance), target]) and decode moves, from each "
        f"search's metrics.json where it reports them: {len(with_ratio)}/{len(diag)} cells report the ratio"
        + (f", {sum(r[5] == 'yes' for r in with_ratio)} in band" if with_ratio else "")
        + f"; {len(with_moves)}/{len(diag)} report decode moves"
        + (f", median {statistics.median(int(r[6]) for r in with_moves)}" if with_moves else "") + ".", "",
        format_table(diag, ["model", "method", "target", "seed", "pre-decode argmax ratio", "in band",
                            "decode moves", "FLOPs kept"]) if diag else "(no TAS cells)", "",
        "## Where the FLOPs go", "",
        "Mean over seeds: blocks kept per stage, mean width kept per stage (over the stage's computed channel groups: its stream and its kept blocks', "
        "as a fraction of each group's channels) and each top-level part's FLOPs as a fraction of the full "
        "network's. *Inherited val top-1*: the architecture with the teacher's weights at its kept channels "
        "before any training (BN statistics re-estimated on 20 training batches).", "",
        format_table(stage_rows(results, a.models, [m for m in a.methods if m not in BORROWERS]),
                     ["model", "FLOPs target", "method", "seeds", "blocks per stage", "width kept per stage",
                      "FLOPs share (of the full network)", "inherited val top-1", "final val top-1"]), "",
        f"![top-1 against FLOPs and measured latency]({png.name})" if png else f"(no plot: {why})", "",
    ]
    return "\n".join(lines)
