"""Channel selection ablation: TAS's prefix selection vs SA++ block attention, on real data.

The acceptance run of the SA++ issue: Fashion-MNIST (the Debian ``dataset-fashion-mnist`` IDX files),
a ``cifar_resnet20`` teacher trained once, then for every FLOPs target (default 50% and 30%), every
selection (``--variants``, default ``prefix`` and ``sapp``) and every seed (default 0 1):

1. **search** (``tas.nas.run.search``) with the same epochs, data and seed for every selection;
2. **distil** the searched architecture from the teacher (``tas.train.run.train(mode="distill")``,
   ``init=inherit``: the teacher's kept channels, KD loss) with the same budget for every selection.

Reported per (target, selection): distilled test top-1 mean ± sample sd over seeds (and each seed),
the search's hard-mode top-1 before distillation (``top1_hard_mode`` of the search's metrics.json,
which shows the selection's effect before KD washes it out), that same network re-evaluated on the
distillation's test split (the full 10k test set by default), the exact FLOPs ratio and the wall time; then paired (same-seed) differences
against ``prefix``, and diagnostics (``--no-diagnose`` skips them) that separate *which channels*
from *how many*: the teacher-inherited network before any training (BN recalibrated) of each
architecture, of the same widths with prefix channels and with the teacher's largest-|γ| channels,
and for SA++ the hard-mode top-1 with and without the learned attention (``sapp_diagnosis.py``).

Data: ``--limit`` caps every split of the teacher/distillation runs (class-balanced, deterministic;
10000 = 1,000 training images per class, and the test split's 10,000 is the full test set). The
search halves the training set first and ``limit`` caps *each half*, so ``--search-limit`` (default
``limit // 2``) gives it as many training images as the other stages; ``limit`` also caps the test
split the search evaluates on (5,000 by default, hence the re-evaluation column).

    python benchmarks/sapp_ablation.py                 # full table -> docs/benchmarks_sapp.md (~40 min on 2 cores)
    python benchmarks/sapp_ablation.py --quick         # ~5 min smoke run -> runs/sapp_ablation_quick/
    python benchmarks/sapp_ablation.py --variants prefix sapp sapp_lr05:selection=sapp,attn_lr=0.05

A variant is a name (``prefix``/``sapp``) or ``NAME:key=value,...`` with ``SearchConfig`` fields
(``selection``, ``attn_lr``, ``block_size``, ``sapp_warmup``, ...). Finished stages (a run directory
with metrics.json) are skipped after checking that they were run with the same settings, and
unfinished ones resume, so an interrupted run continues where it stopped and adding a variant only
runs the new cells. Each stage's output goes to ``<cell>/{search,distill}.log``.

Not a test: nothing here asserts; the markdown is the result.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train.py: spin-waiting threads on shared cores

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from tas.nas import run as searching  # noqa: E402
from tas.nas.config import SearchConfig  # noqa: E402
from tas.train import loop as training  # noqa: E402
from tas.train import run as train_run  # noqa: E402
from tas.io.checkpoint import atomic_write_json, has_state, read_json  # noqa: E402
from tas.io.rundir import is_finished_run  # noqa: E402

from sapp_diagnosis import Evaluator, diagnose  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = "cifar_resnet20"
DATASET = "fashion-mnist"
BASE_VARIANTS = {"prefix": {"selection": "prefix"}, "sapp": {"selection": "sapp"}}
# search settings that must match for a finished search run to be reused
SEARCH_KEYS = ("dataset", "data_dir", "flops_ratio", "epochs", "limit", "seed", "selection", "block_size",
               "attn_lr", "attn_weight_decay", "sapp_warmup", "sapp_sparsify", "sapp_sparse", "sapp_dense",
               "sapp_rounds", "arch_lr", "lr", "batch_size", "k", "tau_max", "tau_min", "tau_schedule", "cost_weight")
TRAIN_KEYS = ("epochs", "limit", "seed", "lr", "batch_size")
NOTES_MARKER = "<!-- analysis below this line is hand-written; sapp_ablation.py keeps it when regenerating -->"


# ---------------------------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------------------------
def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``prefix`` / ``sapp`` / ``NAME:key=value,key=value`` -> (name, SearchConfig overrides)."""
    if ":" not in text:
        if text not in BASE_VARIANTS:
            raise SystemExit(f"error: unknown variant {text!r}: give prefix, sapp or NAME:key=value,...")
        return text, dict(BASE_VARIANTS[text])
    name, _, spec = text.partition(":")
    fields = {f for f in SearchConfig.__dataclass_fields__}
    overrides: dict[str, Any] = {}
    for item in filter(None, spec.split(",")):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in fields:
            raise SystemExit(f"error: variant {text!r}: {item!r} is not key=value with a SearchConfig field")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    overrides.setdefault("selection", "sapp")
    if not name or "/" in name:
        raise SystemExit(f"error: variant {text!r} needs a plain name before ':'")
    return name, overrides


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default=None, help="run directories (default runs/sapp_ablation[_quick])")
    p.add_argument("--doc", default=None, help="markdown result (default docs/benchmarks_sapp.md; "
                                               "--quick: <output>/benchmarks_sapp.md)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX files (default: the Debian package's)")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.3], help="FLOPs targets")
    p.add_argument("--variants", nargs="+", default=["prefix", "sapp"], help="selections (see above)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--limit", type=int, default=10000, help="samples per split for teacher/distillation")
    p.add_argument("--search-limit", type=int, default=None, help="samples per search half (default limit // 2)")
    p.add_argument("--teacher-epochs", type=int, default=4)
    p.add_argument("--teacher-seed", type=int, default=0)
    p.add_argument("--search-epochs", type=int, default=2)
    p.add_argument("--distill-epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--no-diagnose", action="store_true", help="skip the selection diagnostics")
    p.add_argument("--distill-from-search", action="store_true",
                   help="also distil each cell's architecture starting from the search's weights "
                        "(supernet, BN recalibrated) instead of the teacher's kept channels")
    p.add_argument("--report-only", action="store_true", help="only rebuild the markdown from finished cells")
    p.add_argument("--quick", action="store_true",
                   help="smoke run (~5 min): limit 1000, 1 epoch per stage, unless given explicitly")
    return p


def apply_quick(args: argparse.Namespace, argv: list[str]) -> None:
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    if args.quick:
        for flag, value in (("--limit", 1000), ("--teacher-epochs", 1), ("--search-epochs", 1),
                            ("--distill-epochs", 1)):
            if flag not in given:
                setattr(args, flag[2:].replace("-", "_"), value)
    args.output = Path(args.output or ("runs/sapp_ablation_quick" if args.quick else "runs/sapp_ablation"))
    args.doc = Path(args.doc) if args.doc else (args.output / "benchmarks_sapp.md" if args.quick
                                                 else ROOT / "docs" / "benchmarks_sapp.md")
    if args.search_limit is None:
        args.search_limit = max(1, args.limit // 2)


# ---------------------------------------------------------------------------------------------
# stages
# ---------------------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def _check_same(run_dir: Path, got: dict[str, Any], want: dict[str, Any], keys: tuple[str, ...]) -> None:
    diff = {k: (got.get(k), want.get(k)) for k in keys if k in want and got.get(k) != want.get(k)}
    if diff:
        detail = ", ".join(f"{k}: ran {a!r}, asked {b!r}" for k, (a, b) in diff.items())
        raise SystemExit(f"error: {run_dir} was run with other settings ({detail}); "
                         "use another --output or delete that directory")


def _run_stage(run_dir: Path, logfile: Path, fn, cfg: dict[str, Any]) -> float:
    """Run (or resume) one library stage with its stdout in ``logfile``; returns the seconds taken."""
    resume = has_state(run_dir)
    cfg = {**cfg, "output": str(run_dir), "resume": resume, "overwrite": not resume, "progress": False}
    t0 = time.perf_counter()
    with open(logfile, "a") as f, contextlib.redirect_stdout(f):
        fn(cfg)
    return time.perf_counter() - t0


def stage_times(cell: Path) -> dict[str, float]:
    p = cell / "timing.json"
    return read_json(p) if p.is_file() else {}


def record_time(cell: Path, key: str, seconds: float) -> None:
    t = stage_times(cell)
    t[key] = round(t.get(key, 0.0) + seconds, 1)
    atomic_write_json(cell / "timing.json", t)


def ensure_teacher(args: argparse.Namespace) -> Path:
    tdir = args.output / "teacher"
    want = {"epochs": args.teacher_epochs, "limit": args.limit, "seed": args.teacher_seed}
    if is_finished_run(tdir):
        _check_same(tdir, read_json(tdir / "config.json")["train"], want, TRAIN_KEYS)
        log(f"teacher: cached {tdir} (top-1 {read_json(tdir / 'metrics.json')['top1']:.2f}%)")
        return tdir
    if args.report_only:
        raise SystemExit(f"error: --report-only: no finished teacher in {tdir}")
    tdir.mkdir(parents=True, exist_ok=True)
    log(f"teacher: training {MODEL} on {DATASET} ({args.teacher_epochs} epochs, limit {args.limit}) ...")
    cfg = {"model": MODEL, "dataset": DATASET, "data_dir": args.data_dir, "device": "cpu", **want}
    secs = _run_stage(tdir, tdir / "train.log", lambda c: train_run.train(c, mode="teacher"), cfg)
    record_time(tdir, "teacher_s", secs)
    log(f"teacher: top-1 {read_json(tdir / 'metrics.json')['top1']:.2f}% in {secs:.0f} s")
    return tdir


def cell_dir(args: argparse.Namespace, ratio: float, variant: str, seed: int) -> Path:
    return args.output / f"flops{ratio:g}" / variant / f"seed{seed}"


def run_cell(args: argparse.Namespace, teacher: Path, ratio: float, variant: str, overrides: dict[str, Any],
             seed: int, label: str) -> None:
    cell = cell_dir(args, ratio, variant, seed)
    sdir, ddir = cell / "search", cell / "distill"
    cell.mkdir(parents=True, exist_ok=True)
    scfg = {"teacher": str(teacher), "dataset": DATASET, "data_dir": args.data_dir, "flops_ratio": ratio,
            "epochs": args.search_epochs, "limit": args.search_limit, "seed": seed, "device": "cpu", **overrides}
    if is_finished_run(sdir):
        _check_same(sdir, read_json(sdir / "config.json")["search"], scfg, SEARCH_KEYS)
    elif args.report_only:
        return
    else:
        log(f"{label} search ...")
        secs = _run_stage(sdir, cell / "search.log", searching.search, scfg)
        record_time(cell, "search_s", secs)
        m = read_json(sdir / "metrics.json")
        log(f"{label} search done in {secs:.0f} s: FLOPs ratio {m['flops_ratio']:.3f}, "
            f"hard-mode top-1 {m['top1_hard_mode']:.2f}%")
    dcfg = {"arch": str(sdir / "arch.json"), "teacher": str(teacher), "dataset": DATASET, "data_dir": args.data_dir,
            "epochs": args.distill_epochs, "limit": args.limit, "seed": seed, "init": "inherit", "device": "cpu"}
    if is_finished_run(ddir):
        _check_same(ddir, read_json(ddir / "config.json")["train"], dcfg, TRAIN_KEYS)
        if (ddir / "metrics.json").stat().st_mtime < (sdir / "metrics.json").stat().st_mtime:
            raise SystemExit(f"error: {ddir} is older than its search {sdir}; delete it to distil again")
    elif args.report_only:
        return
    else:
        log(f"{label} distil ...")
        secs = _run_stage(ddir, cell / "distill.log", lambda c: train_run.train(c, mode="distill"), dcfg)
        record_time(cell, "distill_s", secs)
        log(f"{label} distil done in {secs:.0f} s: top-1 {read_json(ddir / 'metrics.json')['top1']:.2f}%")
    if args.distill_from_search:  # the same distillation, started from the search's weights
        fdir = cell / "distill_from_search"
        if is_finished_run(fdir):
            _check_same(fdir, read_json(fdir / "config.json")["train"], dcfg, TRAIN_KEYS)
        elif not args.report_only:
            log(f"{label} distil from the search's weights ...")
            secs = _run_stage(fdir, cell / "distill_from_search.log", lambda c: distill_from_search(c, sdir), dcfg)
            record_time(cell, "distill_from_search_s", secs)
            log(f"{label} distil from search done in {secs:.0f} s: top-1 {read_json(fdir / 'metrics.json')['top1']:.2f}%")


def distill_from_search(cfg_dict: dict[str, Any], search_dir: Path) -> dict[str, Any]:
    """``train(mode="distill")`` with the student initialised from the search's materialised network
    (supernet weights: ``tas.load_slim(search_dir)``) instead of the teacher's kept channels."""
    from tas.train.distill import distill, prepare_distillation
    from tas.prune.load import load_slim

    cfg = training.TrainConfig.from_args(cfg_dict)
    ctx, _, spec, teacher = prepare_distillation(cfg)
    student = load_slim(search_dir).train()
    spec.extra_config["init"] = f"search weights ({search_dir})"
    return distill(cfg, ctx, student, spec, teacher)


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def mean_sd(xs: list[float]) -> str:
    if not xs:
        return "–"
    if len(xs) == 1:
        return f"{xs[0]:.2f}"
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}"


def collect(args: argparse.Namespace, variants: list[tuple[str, dict]], teacher: Path) -> list[dict[str, Any]]:
    rows = []
    evaluator = Evaluator(DATASET, args.data_dir, args.limit)  # loads data only if a diagnosis needs it
    for ratio in args.ratios:
        for name, overrides in variants:
            for seed in args.seeds:
                cell = cell_dir(args, ratio, name, seed)
                s, d = cell / "search", cell / "distill"
                if not (is_finished_run(s) and is_finished_run(d)):
                    continue
                sm, dm = read_json(s / "metrics.json"), read_json(d / "metrics.json")
                arch = read_json(s / "arch.json")
                t = stage_times(cell)
                row = {"ratio": ratio, "variant": name, "overrides": overrides, "seed": seed,
                       "top1": dm["top1"], "hard_top1": sm["top1_hard_mode"], "flops_ratio": sm["flops_ratio"],
                       "distill_flops": dm["flops"], "params_ratio": sm["params_ratio"],
                       "projection_steps": sm["projection_steps"], "within": sm["within_tolerance"],
                       "search_s": t.get("search_s", sm["wall_time_s"]), "distill_s": t.get("distill_s", dm["wall_time_s"]),
                       **({"distill_from_search_s": t["distill_from_search_s"]} if "distill_from_search_s" in t else {}),
                       "widths": {n: g["width"] for n, g in arch["groups"].items()},
                       "depths": {n: st["depth"] for n, st in arch["stages"].items()}}
                f = cell / "distill_from_search"
                if is_finished_run(f):
                    row["top1_from_search"] = read_json(f / "metrics.json")["top1"]
                if not args.no_diagnose:
                    row["diag"] = diagnose(cell, teacher, evaluator)
                rows.append(row)
    return rows


def write_report(args: argparse.Namespace, variants: list[tuple[str, dict]], teacher: Path,
                 rows: list[dict[str, Any]], command: str, session_s: float) -> str:
    tm = read_json(teacher / "metrics.json")
    t_s = stage_times(teacher).get("teacher_s", tm["wall_time_s"])
    total = t_s + sum(r["search_s"] + r["distill_s"] + r.get("distill_from_search_s", 0.0) for r in rows)
    diag = not args.no_diagnose
    L = ["# SA++ vs prefix channel selection (Fashion-MNIST, cifar_resnet20)", "",
         f"Generated by `benchmarks/sapp_ablation.py` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC "
         f"({platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs, torch {torch.__version__}, "
         f"{torch.get_num_threads()} threads).", "",
         "Command(s) that ran the cells (run them again to reproduce; finished cells are skipped):", "",
         "```", command, "```", "",
         f"* Data: Fashion-MNIST IDX files (Debian `dataset-fashion-mnist`), 28×28×1. Teacher and distillation: "
         f"`limit {args.limit}` = {args.limit:,} class-balanced training images; test top-1 on "
         f"{min(args.limit, 10000):,} test images{' (the full test set)' if args.limit >= 10000 else ''}. "
         f"Search: `limit {args.search_limit}` per half ({2 * args.search_limit:,} training images, half for "
         f"the weights, half for the architecture); its `top1_hard_mode` is measured on the first "
         f"{min(args.search_limit, 10000):,} (class-balanced) test images, so the next column re-evaluates the "
         f"same network on the distillation's test split.",
         f"* Teacher: `{MODEL}` trained once, {args.teacher_epochs} epochs, seed {args.teacher_seed}: "
         f"**{tm['top1']:.2f}%** top-1, {tm['flops']:,} MACs.",
         f"* Per cell: search {args.search_epochs} epoch(s), then distillation {args.distill_epochs} epoch(s) with "
         f"`init=inherit` (teacher's kept channels) and KD (α 0.9, T 4); everything else at the library's "
         f"defaults and identical across selections. Seeds {', '.join(map(str, args.seeds))} "
         f"(the seed sets the search split, data order and α/β init, so same-seed cells are paired).",
         "* top-1: mean ± sample standard deviation over seeds; the per-seed values follow in brackets.", ""]
    L += ["## Results", "",
          "| FLOPs target | selection | seeds | distilled top-1 | search hard-mode top-1 (metrics.json) | "
          "hard-mode top-1, distillation's test split | exact FLOPs ratio | wall time / seed (search + distil) |",
          "|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple[float, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["ratio"], r["variant"]), []).append(r)
    for (ratio, name), rs in groups.items():
        per = lambda k: " / ".join(f"{r[k]:.2f}" for r in rs)  # noqa: E731
        hard_full = [r["diag"]["hard_top1_test"] for r in rs] if diag else []
        fr = [r["flops_ratio"] for r in rs]
        label = name if not rs[0]["overrides"] or set(rs[0]["overrides"]) == {"selection"} else \
            f"{name} ({', '.join(f'{k}={v}' for k, v in rs[0]['overrides'].items() if k != 'selection')})"
        L.append(f"| {ratio:g} | {label} | {len(rs)} | **{mean_sd([r['top1'] for r in rs])}** ({per('top1')}) | "
                 f"{mean_sd([r['hard_top1'] for r in rs])} ({per('hard_top1')}) | "
                 f"{mean_sd(hard_full)}{' (' + ' / '.join(f'{x:.2f}' for x in hard_full) + ')' if hard_full else ''} | "
                 f"{statistics.mean(fr):.3f} ({' / '.join(f'{x:.3f}' for x in fr)}) | "
                 f"{statistics.mean(r['search_s'] for r in rs):.0f} + {statistics.mean(r['distill_s'] for r in rs):.0f} s |")
    # paired differences
    L += ["", "## Paired differences against prefix (same seed)", "",
          "| FLOPs target | selection | Δ distilled top-1 (per seed) | mean Δ | seed sd of prefix / of this | "
          "Δ search hard-mode top-1 (per seed) | mean Δ |", "|---|---|---|---|---|---|---|"]
    for (ratio, name), rs in groups.items():
        if name == "prefix" or (ratio, "prefix") not in groups:
            continue
        base = {r["seed"]: r for r in groups[(ratio, "prefix")]}
        pairs = [(r, base[r["seed"]]) for r in rs if r["seed"] in base]
        if not pairs:
            continue
        d1 = [a["top1"] - b["top1"] for a, b in pairs]
        d2 = [a["hard_top1"] - b["hard_top1"] for a, b in pairs]
        sd = lambda xs: f"{statistics.stdev(xs):.2f}" if len(xs) > 1 else "–"  # noqa: E731
        L.append(f"| {ratio:g} | {name} | {' / '.join(f'{x:+.2f}' for x in d1)} | **{statistics.mean(d1):+.2f}** | "
                 f"{sd([r['top1'] for r in groups[(ratio, 'prefix')]])} / {sd([r['top1'] for r in rs])} | "
                 f"{' / '.join(f'{x:+.2f}' for x in d2)} | {statistics.mean(d2):+.2f} |")
    fs = {k: [r for r in rs if "top1_from_search" in r] for k, rs in groups.items()}
    if any(fs.values()):
        L += ["", "## Distillation started from the search's weights", "",
              "The same distillation (epochs, KD, data, seed) with the student initialised from the search's "
              "materialised network (`tas.load_slim(<search run>)`: supernet weights, BN recalibrated) "
              "instead of the teacher's kept channels (`init=inherit`), so that what the search trained "
              "into the selected channels can carry over.", "",
              "| FLOPs target | selection | seeds | distilled top-1, init = search weights | init = inherit (above) |",
              "|---|---|---|---|---|"]
        for (ratio, name), rs in fs.items():
            if rs:
                a, b = [r["top1_from_search"] for r in rs], [r["top1"] for r in rs]
                L.append(f"| {ratio:g} | {name} | {len(rs)} | **{mean_sd(a)}** ({' / '.join(f'{x:.2f}' for x in a)}) | "
                         f"{mean_sd(b)} ({' / '.join(f'{x:.2f}' for x in b)}) |")
    if diag:
        L += ["", "## Diagnostics: which channels vs how many", "",
              "Teacher-inherited networks *before any training* (BN statistics recalibrated on 20 training "
              "batches, the distillation's test split): the cell's own architecture, the same widths/depths with the first "
              "channels (prefix), and with the teacher's largest-Σ|γ| channels. For SA++ cells also the "
              "search's hard-mode network (supernet weights, BN recalibrated) without and with the learned "
              "attention × mask (search mode multiplies every channel by it; hard mode and the materialised "
              "network now do too, folded into the BN affine parameters; 'unfolded' drops it, as they did "
              "before), and how the attention ranked blocks.", "",
              "| FLOPs target | selection | seed | inherited: own / prefix / largest-Σ\\|γ\\| | hard-mode: unfolded → folded | "
              "groups not prefix | masked blocks kept | median max/min attention |",
              "|---|---|---|---|---|---|---|---|"]
        for (ratio, name), rs in groups.items():
            for r in rs:
                dg = r["diag"]
                sp = dg.get("sapp")
                L.append(f"| {ratio:g} | {name} | {r['seed']} | {dg['inherit_top1_own']:.2f} / {dg['inherit_top1_prefix']:.2f} / "
                         f"{dg['inherit_top1_gamma']:.2f} | "
                         + (f"{dg['hard_top1_unfolded_recal']:.2f} → {dg['hard_top1_folded_recal']:.2f} | "
                            f"{sp['groups_not_prefix']}/{sp['groups_searched']} | {sp['masked_blocks_kept']} | "
                            f"{sp['attn_max_over_min_median']} |" if sp else "– | – | – | – |"))
    L += ["", "## Architectures", "", "| FLOPs target | selection | seed | depths | widths (stem, layer2, layer3 streams; inner widths per block) | projection steps |",
          "|---|---|---|---|---|---|"]
    for (ratio, name), rs in groups.items():
        for r in rs:
            w = r["widths"]
            streams = ", ".join(str(w[k]) for k in ("stem", "layer2", "layer3") if k in w)
            inner = " ".join(str(v) for k, v in w.items() if k not in ("stem", "layer2", "layer3"))
            L.append(f"| {ratio:g} | {name} | {r['seed']} | {'/'.join(str(v) for v in r['depths'].values())} | "
                     f"{streams}; {inner} | {r['projection_steps']} |")
    L += ["", f"Total compute of the cells in this table: {total / 60:.1f} min (teacher {t_s:.0f} s, stage "
              f"times as measured around each library call); this invocation took {session_s / 60:.1f} min.", ""]
    # a hand-written analysis below NOTES_MARKER in an existing doc survives regeneration
    old = args.doc.read_text() if args.doc.is_file() else ""
    if NOTES_MARKER in old:
        L += [NOTES_MARKER + old.split(NOTES_MARKER, 1)[1].rstrip("\n"), ""]
    text = "\n".join(L)
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(text)
    atomic_write_json(args.output / "results.json", {"rows": rows, "command": command})
    return text


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    apply_quick(args, argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [parse_variant(v) for v in args.variants]
    if len({n for n, _ in variants}) != len(variants):
        raise SystemExit("error: variant names must be unique")
    command = "python benchmarks/sapp_ablation.py " + shlex.join(argv)
    t0 = time.perf_counter()
    args.output.mkdir(parents=True, exist_ok=True)
    recorded = args.output / "commands.txt"  # every command that ran cells into this output
    commands = recorded.read_text().splitlines() if recorded.is_file() else []
    if not args.report_only and command not in commands:
        commands.append(command)
        recorded.write_text("\n".join(commands) + "\n")
    command = "\n".join(commands) or command
    teacher = ensure_teacher(args)
    cells = [(r, n, o, s) for r in args.ratios for n, o in variants for s in args.seeds]
    for i, (ratio, name, overrides, seed) in enumerate(cells, 1):
        run_cell(args, teacher, ratio, name, overrides, seed, f"[{i}/{len(cells)}] flops {ratio:g} {name} seed {seed}:")
    if not args.no_diagnose:
        log("diagnostics ...")
    rows = collect(args, variants, teacher)
    text = write_report(args, variants, teacher, rows, command, time.perf_counter() - t0)
    print(text)
    log(f"wrote {args.doc} ({len(rows)}/{len(cells)} cells) in {(time.perf_counter() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
