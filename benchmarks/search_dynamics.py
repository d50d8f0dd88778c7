"""Search dynamics, one factor at a time: which warm-up, α learning rate, K, τ schedule and arch
steps per weight step make a TAS search land in its budget band and pick a good architecture?

Issue 14's tuning benchmark, on ``benchmarks/allocation.py``'s data and teacher
(:func:`allocation.register_dataset`, :meth:`allocation.AllocationBench.train_teacher`) and
``compare.py``'s cache. Fashion-MNIST at 28 px: ``--limit`` class-balanced training images, and a
held-out, class-balanced validation split of ``--val`` *training* images. Every number here is
measured on that validation split; the test set is never read. A teacher is trained once
(``--teacher-epochs``, cached); then each cell = (setting, seed) runs ``search.py`` at the FLOPs
target ``--ratio`` with the search defaults changed by the setting alone, and a fixed
distillation of ``--distill-epochs`` (``train.py --arch --teacher``). Per cell: the pre-decode
argmax ratio and whether it lies in the band ``[target·(1 − tolerance), target]``, the decode moves, the
expected-cost ratio at the end, the hard-mode val top-1 right after the search, the fraction of
the last quarter's logged steps whose argmax was in the band, val top-1 after distillation, wall
time. Writes one table per factor (mean ± sd over seeds) to ``docs/benchmarks_search_dynamics.md``.

    python benchmarks/search_dynamics.py --quick   # machinery check (~3 min)
    python benchmarks/search_dynamics.py           # the sweep (~1 h on one thread; resumable)
    python benchmarks/search_dynamics.py --factors landing --ratios 0.7 0.5 0.25 0.12 --seeds 0 1 2 3 4 \
        --distill-only "arch_lr_schedule=constant,entropy_weight=0.0" default \
        --output runs/search_dynamics/landing --doc docs/benchmarks_search_landing.md   # the landing study

A cell is (setting, target, seed); ``--ratios`` takes several targets, ``--distill-only`` limits the
distillation (the slow half of a cell) to the named settings.

Resumable: finished cells live in ``<output>/results.json``; a rerun skips them. Not a test.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train.py

import argparse  # noqa: E402
import math  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import allocation  # noqa: E402  (the held-out split, the teacher)
from benchstats import paired_differences  # noqa: E402
from benchkit import log, prepare_run  # noqa: E402
from tas.io.checkpoint import atomic_write_bytes, atomic_write_json  # noqa: E402
from tas.cli import format_table  # noqa: E402
from tas.io.rundir import is_finished_run  # noqa: E402
from tas.nas import run as searching  # noqa: E402
from tas.nas.config import SearchConfig  # noqa: E402
from tas.train import run as train_run  # noqa: E402

#: factor -> its settings (search overrides) around the defaults; ``{}`` is the defaults' own cell
FACTORS = {
    "arch warm-up": [{"arch_warmup": 0.0}, {"arch_warmup": 0.1}, {"arch_warmup": 0.3}],
    "arch lr": [{"arch_lr": 0.015}, {"arch_lr": 0.05}, {"arch_lr": 0.075}, {"arch_lr": 0.15}, {"arch_lr": 0.3}],
    "K": [{"k": 1}, {"k": 2}, {"k": 3}],
    "tau schedule": [{"tau_schedule": "cosine", "tau_min": 0.1}, {"tau_schedule": "linear"}, {"tau_min": 0.03}],
    "arch steps per weight step": [{"arch_steps": 0.5}, {"arch_steps": 1.0}, {"arch_steps": 2.0}],
    "landing": [{"arch_lr_schedule": "constant", "entropy_weight": 0.0},
                {"arch_lr_schedule": "cosine", "arch_lr_hold": 0.0, "entropy_weight": 0.0},
                {"arch_lr_schedule": "cosine", "arch_lr_hold": 0.0, "entropy_weight": 1.0},
                {"arch_lr_schedule": "cosine", "arch_lr_hold": 0.5, "entropy_weight": 1.0},
                {"arch_lr_schedule": "cosine", "arch_lr_hold": 0.5, "entropy_weight": 3.0}],
    # every block kept where widths alone reach the target (auto equals on below the width-only minimum)
    "depth": [{"search_depth": "on"}, {"search_depth": "auto"}],
    # the teacher's weights left as they are while the architecture is searched (weight lr 0)
    "weight steps": [{"lr": 0.05}, {"lr": 0.0}],
    # the controller's second constraint: the sharpened expected cost (its value and gradient), the
    # argmax's exact cost with the sharpened gradient (straight-through), or a sharper temperature
    "sharpened constraint": [{"sharp_value": "sharpened", "sharp_temperature": 0.1}, {"sharp_value": "argmax"},
                             {"sharp_temperature": 0.03}],
    "landing steps": [{"landing_steps": 0.0}, {"landing_steps": 0.5}, {"landing_steps": 0.5, "landing_lr": 1.0}],
    # a finer search space: every block count, widths in multiples of 4 (the argmax's moves < the band)
    "space grain": [{"space": None}, {"space": "cifar_resnet_fine"}],
}
#: the current defaults, as the factors name them: a setting equal to these is the defaults' cell
DEFAULTS = {"arch_warmup": 0.0, "arch_lr": 0.15, "k": 2, "tau_schedule": "cosine", "tau_min": 0.1, "arch_steps": 1.0,
            "arch_lr_schedule": "cosine", "arch_lr_hold": 0.5, "entropy_weight": 3.0, "search_depth": "on",
            "lr": 0.05, "sharp_value": "sharpened", "sharp_temperature": 0.1,
            "landing_steps": 0.5, "landing_lr": 0.5, "space": None}
MODES = {
    "quick": {"limit": 600, "val": 300, "teacher_epochs": 1, "search_epochs": 1, "distill_epochs": 1,
              "batch_size": 64, "seeds": [0], "factors": ["arch steps per weight step"]},
    "full": {"limit": 3000, "val": 600, "teacher_epochs": 5, "search_epochs": 1, "distill_epochs": 2,
             "batch_size": 32, "seeds": [0, 1], "factors": list(FACTORS)},
}
KEYS = ("limit", "val", "img_size", "teacher_epochs", "search_epochs", "distill_epochs", "batch_size", "lr",
        "model")


def setting_name(overrides: dict) -> str:
    """The cell name of a setting: ``default``, or its departures from :data:`DEFAULTS`."""
    diff = {k: v for k, v in overrides.items() if DEFAULTS.get(k) != v}
    return "default" if not diff else ",".join(f"{k}={v}" for k, v in sorted(diff.items()))


def late_in_band(run: Path, band: tuple[float, float]) -> float | None:
    """Of the steps logged in the search's last quarter, the fraction whose argmax ratio lay in
    the band (TensorBoard's ``search/derived_ratio``): 1.0 means it settled, not just ended there."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    if "search/derived_ratio" not in acc.Tags()["scalars"]:
        return None
    events = acc.Scalars("search/derived_ratio")
    last = max(e.step for e in events)
    late = [e.value for e in events if e.step > 0.75 * last]
    return sum(band[0] - 1e-9 <= v <= band[1] + 1e-9 for v in late) / len(late) if late else None


class DynamicsBench(allocation.AllocationBench):
    """Cells (setting, seed): a search with the setting's overrides, then a fixed distillation."""

    keys = KEYS

    def teacher(self, model_name: str) -> dict:
        """Train (once) and describe the teacher; its top-1 is on the validation split only."""
        info = self.results["teachers"].get(model_name)
        if info is None or not is_finished_run(self.teacher_dir(model_name)):
            t0 = time.perf_counter()
            m = self.train_teacher(model_name, self.root / model_name / "teacher")
            info = {"val_top1": m["top1"], "flops": m["flops"], "wall_s": round(time.perf_counter() - t0, 1),
                    **m["teacher_info"]}
            self.results["teachers"][model_name] = info
            self.save()
        log(f"teacher {model_name}: val top-1 {info['val_top1']:.2f}% ({self.teacher_dir(model_name)})")
        return info

    def dynamics_cell(self, name: str, overrides: dict, seed: int, ratio: float, distill: bool = True) -> dict:
        a = self.args
        cdir = self.root / a.model / f"r{ratio}" / name / f"s{seed}"
        search_dir, slim_dir = cdir / "search", cdir / "slim"
        timing_path = cdir / "timing.json"
        timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
        teacher = self.teacher_dir(a.model)
        cdir.mkdir(parents=True, exist_ok=True)
        with open(cdir / "log.txt", "a") as logf, contextlib.redirect_stdout(sys.stdout if a.verbose else logf):
            if "search_s" not in timing or not is_finished_run(search_dir):
                t0 = time.perf_counter()
                searching.search({**self.common(seed), "teacher": str(teacher), "flops_ratio": ratio,
                                  "epochs": a.search_epochs, "batch_size": a.batch_size, "output": str(search_dir),
                                  "overwrite": True, "log_every": 5, **overrides})
                timing = {"search_s": round(time.perf_counter() - t0, 1)}
                atomic_write_json(timing_path, timing)
            if distill and ("distill_s" not in timing or not is_finished_run(slim_dir)):
                t0 = time.perf_counter()
                train_run.train({**self.common(seed), "arch": str(search_dir / "arch.json"), "teacher": str(teacher),
                                "epochs": a.distill_epochs, "batch_size": a.batch_size, "lr": a.lr,
                                "output": str(slim_dir), "overwrite": True}, mode="distill")
                timing["distill_s"] = round(time.perf_counter() - t0, 1)
                atomic_write_json(timing_path, timing)
        sm = json.loads((search_dir / "metrics.json").read_text())
        band, pre = sm["band"], sm["pre_decode_ratio"]
        return {"setting": name, "overrides": overrides, "seed": seed, "target": ratio,
                "pre_decode_ratio": pre, "in_band": band[0] - 1e-9 <= pre <= band[1] + 1e-9,
                "decode_moves": sm["decode_moves"], "expected_ratio": sm.get("expected_ratio"),
                "flops_ratio": sm["flops_ratio"], "search_val_top1": sm["top1_hard_mode"],
                "late_in_band": late_in_band(search_dir, band),
                "val_top1": json.loads((slim_dir / "metrics.json").read_text())["top1"] if distill else None,
                "search_s": timing["search_s"], "distill_s": timing.get("distill_s", 0.0) if distill else 0.0}


# -- report -----------------------------------------------------------------------------------------
def _ms(values: list[float], fmt: str = ".2f") -> str:
    """``mean ± sd`` (sample sd; just the value for one seed)."""
    if not values:
        return "–"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def setting_row(label: str, cells: list[dict], base: list[dict]) -> list[str]:
    """One table row: landing, costs, accuracies (mean ± sd) and the paired Δ against the defaults."""
    distilled = [c for c in cells if c["val_top1"] is not None]  # --distill-only leaves some undistilled
    diff = paired_differences({c["seed"]: c["val_top1"] for c in distilled},
                              {c["seed"]: c["val_top1"] for c in base if c["val_top1"] is not None})
    late = [c["late_in_band"] for c in cells if c["late_in_band"] is not None]
    return [label, f"{cells[0]['target']:g}", f"{sum(c['in_band'] for c in cells)}/{len(cells)}", _ms([c["pre_decode_ratio"] for c in cells], ".3f"),
            f"{statistics.median(c['decode_moves'] for c in cells):g}",
            _ms([c["expected_ratio"] for c in cells if c["expected_ratio"] is not None], ".3f"),
            _ms(late, ".2f"), _ms([c["search_val_top1"] for c in cells]), _ms([c["val_top1"] for c in distilled]),
            "–" if diff is None or cells[0]["setting"] == "default" else
            " / ".join(f"{d:+.2f}" for d in diff["diffs"]),
            f"{statistics.mean(c['search_s'] + c['distill_s'] for c in cells):.0f}"]


HEADER = ["setting", "target", "in band", "pre-decode argmax ratio", "median decode moves", "expected ratio (end)",
          "last-quarter steps in band", "val top-1 after search", "val top-1 after distil",
          "Δ distil vs default per seed", "wall s"]


def factor_tables(results: dict, factors: list[str]) -> list[str]:
    cells = results["cells"].values()
    targets = sorted({c["target"] for c in cells}, reverse=True)
    lines = []
    for factor in factors:
        rows = []
        for target in targets:  # a row per setting and target; Δ against the defaults at the same target
            base = [c for c in cells if c["setting"] == "default" and c["target"] == target]
            for overrides in FACTORS[factor]:
                name = setting_name(overrides)
                done = [c for c in cells if c["setting"] == name and c["target"] == target]
                if done:
                    label = (", ".join(f"{k}={v}" for k, v in overrides.items()) or "defaults") + \
                        (" (default)" if name == "default" and overrides else "")
                    rows.append(setting_row(label, done, base))
        lines += [f"### {factor}", "", format_table(rows, HEADER) if rows else "(no cells yet)", ""]
    return lines


def noise_summary(results: dict) -> str:
    """The seed noise: the pooled within-setting sd of the distilled val top-1 and of the argmax ratio."""
    by: dict[str, list[dict]] = {}
    for c in results["cells"].values():
        by.setdefault(f"{c['setting']}@{c['target']}", []).append(c)
    pairs = [cs for cs in by.values() if len(cs) > 1]
    if not pairs:
        return "Seed noise: fewer than two seeds per setting so far."

    def known(v) -> bool:  # a search-only cell has no distilled top-1 (None, or NaN in older results)
        return v is not None and not math.isnan(v)

    def pooled(key: str) -> float:
        groups = [[c[key] for c in cs if known(c[key])] for cs in pairs]
        groups = [g for g in groups if len(g) > 1]
        num = sum((len(g) - 1) * statistics.variance(g) for g in groups)
        return (num / max(1, sum(len(g) - 1 for g in groups))) ** 0.5

    means = [statistics.mean(v) for cs in pairs if (v := [c["val_top1"] for c in cs if known(c["val_top1"])])]
    distilled = (f"distilled val top-1 {pooled('val_top1'):.2f} points, " if means else "")
    spread = (f" The setting means of the distilled val top-1 span {min(means):.2f}–{max(means):.2f}." if means else "")
    return (f"Seed noise (pooled within-setting sd over {len(pairs)} settings with ≥ 2 seeds): {distilled}"
            f"val top-1 right after the search {pooled('search_val_top1'):.2f}, pre-decode argmax ratio "
            f"{pooled('pre_decode_ratio'):.3f}.{spread}")


def render(args, results: dict, elapsed: float) -> str:
    a = args
    cells = list(results["cells"].values())
    out = Path(a.output).resolve()
    shown = out.relative_to(REPO) if out.is_relative_to(REPO) else out
    t = results["teachers"].get(a.model, {})
    return "\n".join([
        "# Search dynamics, one factor at a time (issue 14)", "",
        f"Generated by `{a.command}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC ({elapsed / 60:.1f} min "
        f"this invocation; cells cached in `{shown}/results.json`): {os.cpu_count()} CPU cores "
        f"({platform.machine()}, shared, 1-min load {a.load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the "
        f"end), torch {torch.__version__}, {a.threads} thread(s).", "",
        f"**Setup.** `{a.model}` on Fashion-MNIST at 28 px: {a.limit} class-balanced training images (the search "
        f"halves them: weight steps on one half, architecture steps on the other) and a held-out, class-balanced "
        f"validation split of {a.val} *training* images. Every accuracy below is on that validation split; the "
        f"test set is never read. Teacher: {a.teacher_epochs} epochs of SGD (lr 0.1, cosine), val top-1 "
        f"{t.get('val_top1', float('nan')):.2f}%. Each cell: `search.py --flops-ratio R` (R in {a.ratios}) for "
        f"{a.search_epochs} epochs at batch {a.batch_size} with the project's defaults except the setting named, "
        f"then {a.distill_epochs} epochs of distillation (KD α 0.9 T 4, SGD lr {a.lr}, cosine). Seeds "
        f"{sorted({c['seed'] for c in cells})} (not every setting has every seed: see the *in band* counts).", "",
        "**Columns.** *in band*: cells whose pre-decode argmax FLOPs ratio lies in the search's band "
        f"[target·(1 − tolerance), target] (tolerance {SearchConfig.tolerance} by default). *expected ratio*: the softmax-expected FLOPs ratio at the end "
        "of the search. *last-quarter steps in band*: of the logged steps (every 5th) in the search's last "
        "quarter, the fraction whose argmax was in the band (1.00: settled there, not just passing). *val "
        "top-1 after search*: the decoded architecture in hard mode, BN recalibrated. *Δ distil vs default*: "
        "the setting's distilled val top-1 minus the default's, per seed (paired: same data order). Values "
        "are mean ± sample sd over the seeds.", "",
        noise_summary(results), "",
        f"All cells: {sum(c['in_band'] for c in cells)}/{len(cells)} in band, median decode moves "
        f"{statistics.median(c['decode_moves'] for c in cells) if cells else '–'}.", "",
        *factor_tables(results, a.factors),
    ])


# -- main -------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="machinery check: tiny subset, one factor, one seed")
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.25], help="FLOPs fractions kept (a cell each)")
    p.add_argument("--factors", nargs="+", default=None, choices=list(FACTORS))
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--only", nargs="+", default=None, metavar="SETTING",
                   help="run only these settings of the factors (names as in the tables' cells: default, arch_lr=0.15)")
    p.add_argument("--limit", type=int, default=None, help="training images (class-balanced)")
    p.add_argument("--val", type=int, default=None, help="held-out validation images from the training set")
    p.add_argument("--teacher-epochs", type=int, default=None)
    p.add_argument("--search-epochs", type=int, default=None)
    p.add_argument("--distill-epochs", type=int, default=None)
    p.add_argument("--distill-only", nargs="+", default=None, metavar="SETTING",
                   help="distil only these settings' cells (the others report the landing and the "
                        "hard-mode val top-1 after the search)")
    p.add_argument("--batch-size", type=int, default=None, help="search and distillation batch")
    p.add_argument("--lr", type=float, default=0.05, help="distillation learning rate")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--deadline", default=None, help="HH:MM UTC: launch no new cell after it")
    p.add_argument("--report-only", action="store_true", help="write the report from the cached cells, run nothing")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--output", default=None, help="default runs/search_dynamics/<mode>")
    p.add_argument("--doc", default=None, help="markdown to write (default docs/benchmarks_search_dynamics[_quick].md)")
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    args.command = shlex.join(["python", "benchmarks/search_dynamics.py", *(sys.argv[1:] if argv is None else argv)])
    args.mode = "quick" if args.quick else "full"
    for key, value in MODES[args.mode].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    # allocation.AllocationBench's teacher: one run of teacher_epochs (the cap stops the doubling)
    args.img_size, args.teacher_cap, args.plateau_delta, args.test_limit = 28, args.teacher_epochs, 0.1, None
    args.output = args.output or str(REPO / "runs" / "search_dynamics" / args.mode)
    suffix = "_quick" if args.mode == "quick" else ""
    args.doc = args.doc or str(REPO / "docs" / f"benchmarks_search_dynamics{suffix}.md")
    return args


def past(deadline: str | None) -> bool:
    if deadline is None:
        return False
    now = datetime.now(timezone.utc)
    return now.strftime("%H:%M") >= deadline


def main(argv=None) -> int:
    args = parse_args(argv)
    prepare_run(args)
    allocation.register_dataset(args.data_dir, args.limit, args.val)
    start = time.perf_counter()
    bench = DynamicsBench(args)
    # every setting once (the defaults' cell is shared by the factors), seed by seed: a stopped
    # sweep still has one seed of every setting
    settings = {setting_name(o): {k: v for k, v in o.items() if DEFAULTS.get(k) != v}
                for f in args.factors for o in FACTORS[f]}
    todo = [(n, o, s, r) for s in args.seeds for r in args.ratios for n, o in settings.items()
            if args.only is None or n in args.only]
    if not args.report_only:
        bench.teacher(args.model)
        for i, (name, overrides, seed, ratio) in enumerate(todo):
            key = f"{name}/r{ratio}/s{seed}"
            distill = args.distill_only is None or name in args.distill_only
            done = bench.results["cells"].get(key)
            if done is not None and (done["val_top1"] is not None or not distill):
                continue
            if past(args.deadline):
                log(f"deadline {args.deadline} UTC passed: no new cells")
                break
            t0 = time.perf_counter()
            c = bench.results["cells"][key] = bench.dynamics_cell(name, overrides, seed, ratio, distill)
            bench.save()
            log(f"[{i + 1}/{len(todo)}] {key}: argmax {c['pre_decode_ratio']:.3f} ({'in' if c['in_band'] else 'OUT of'} "
                f"band), moves {c['decode_moves']}, expected {c['expected_ratio']:.3f}, val top-1 search "
                f"{c['search_val_top1']:.2f} distil {c['val_top1'] or float('nan'):.2f} ({time.perf_counter() - t0:.0f}s; "
                f"{(time.perf_counter() - start) / 60:.1f} min so far)")
    text = render(args, bench.results, time.perf_counter() - start)
    log("\n" + text)
    if args.doc != "-":
        atomic_write_bytes(args.doc, text.encode())
        log(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
