"""Where allocation matters: does TAS beat uniform scaling at low FLOPs, on deep and inverted-residual networks?

Issue 14's benchmark, on ``benchmarks/compare.py``'s machinery (its :class:`compare.Bench` runs,
caches and times the cells). What it changes:

* **Data.** Fashion-MNIST at its native 28 px. A held-out validation split is taken from the
  training set (class-balanced, ``--val`` images); ``--limit`` class-balanced training images are
  drawn from the rest. Every method and seed uses exactly these images (registered as the dataset
  ``fashion-mnist-alloc``, whose ``test`` split *is* the validation split: every training run and
  search evaluates on it). The real 10 000 test images are used only for the reported accuracy.
* **Teacher until it plateaus.** Cosine runs of E, 2E, 4E, … epochs (each from scratch) until
  doubling the length gains less than ``--plateau-delta`` points of validation top-1, or the next
  run would exceed ``--teacher-cap`` epochs; the run with the best validation top-1 is the teacher.
* **Models and ratios.** ``cifar_resnet56`` (depth choices matter) and ``cifar_mobilenetv2``
  (tas.models), FLOPs ratios 0.5, 0.25 and 0.12, 3 seeds.
* **Methods.** ``tas`` (FLOPs target), ``tas-latency`` (ORT CPU latency target, batch 32),
  ``uniform``, ``l1``, ``synflow``, and ``uniform-depth`` (compound width and depth scaling) where
  width-only methods cannot reach a ratio (``--uniform-depth always``: at every ratio). Width-only
  methods below their reachable minimum are skipped and listed. Every method gets the same
  post-teacher budget of ``--budget`` epochs; TAS's search epochs count against it.
* **Report.** Paired per-seed differences against the ratio's trivial rule (``uniform``, or
  ``uniform-depth`` where ``uniform`` cannot go) with 95 % t intervals; accuracy at equal measured
  ONNX Runtime latency (each method's curve interpolated at the latency a TAS network measured); for
  TAS cells the pre-decode argmax ratio and the decode moves when the search's metrics.json has them;
  a plot against FLOPs and against latency.

    python benchmarks/allocation.py --quick   # <= 10 min: machinery check, cifar_resnet20, tiny subset
    python benchmarks/allocation.py --preset cpu   # ~1-2 h on one thread: resnet20, ratios 0.25/0.12, 3 seeds
    python benchmarks/allocation.py           # hours: the benchmark (resumable; rerun to continue)

Resumable like compare.py (``<output>/results.json``). Not a test: nothing here asserts.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train.py

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import Subset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import compare  # noqa: E402  (the cells, their cache, the timing, the plot)
import tas  # noqa: E402
import tas.data  # noqa: E402
from benchstats import interp_at, paired_differences  # noqa: E402
from benchkit import log, prepare_run, write_report  # noqa: E402
from tas.io.checkpoint import atomic_write_bytes  # noqa: E402
from compare import LATENCY_METHOD  # noqa: E402
from tas.cli import format_table  # noqa: E402
from tas.errors import TasError  # noqa: E402
from tas.io.rundir import is_finished_run  # noqa: E402
from tas.prune.load import load_run  # noqa: E402
from tas.data import create_loaders  # noqa: E402
from tas.nas.searcher import recalibrate_bn  # noqa: E402
from tas.nas.space import load_space  # noqa: E402
from tas.prune.flops import layer_macs  # noqa: E402
from tas.prune.materialize import build_slim, materialize  # noqa: E402
from tas.train import engine  # noqa: E402

DATASET = "fashion-mnist-alloc"
#: a report's hand-written analysis starts at this line; regenerating the report keeps it
NOTES = "<!-- notes: kept when the report is regenerated -->"
WIDTH_ONLY = ("uniform", "l1", "synflow", "tas-width", "tas-width-filters")  # no depth choice: none below the width-only minimum
#: diagnostic: the same seed's ``tas`` architecture distilled for the whole budget, as the baselines are
#: (isolates the architecture from the epochs TAS spends searching); runs after that ``tas`` cell
ARCH_ONLY = "tas-arch"
#: cells that reuse the same seed's ``tas`` search and change only its distillation (its settings here)
BORROWERS = {
    ARCH_ONLY: {},
    # the search's own weights (the supernet's, trained while it searched) as the start, not the teacher's
    "tas-init": {"init": "search"},
}
#: TAS variants (diagnostics and candidate fixes): the search settings each changes
VARIANTS = {
    # widths only, every block kept: does the search lose by dropping depth?
    "tas-width": {"space": {**dataclasses.asdict(load_space("cifar_resnet")),
                            "search": {"stem": True, "stream": True, "inner": True, "depth": False}}},
    # the controller aims at the target itself and the decode fills the budget up to it: the default band
    # (target - 0.05 of the full FLOPs .. target) lets a 0.12 search end at 0.07, 40 % of its budget unspent
    "tas-fill": {"fill_budget": True},
    # the weight step distils from the teacher (KD α 0.9, T 4, as the distillation), and the distillation
    # starts from those weights (tas-init's start, trained on soft targets rather than labels)
    "tas-kd": {"kd_alpha": 0.9},
    # the channel order of the l1 baseline (producers' filter L1, unnormalised) instead of the group L1
    "tas-filters": {"channel_order": "filters"},
    # two architecture steps per weight step: twice the controller's steps in the same search epoch
    "tas-arch2": {"arch_steps": 2.0},
}
VARIANTS["tas-width-filters"] = {**VARIANTS["tas-width"], **VARIANTS["tas-filters"]}
#: a variant's distillation settings
VARIANT_DISTILL = {"tas-kd": {"init": "search"}}
METHODS = ("tas", LATENCY_METHOD, "uniform", "uniform-depth", "l1", "synflow", *BORROWERS, *VARIANTS)
#: the methods that search (their metrics.json reports the pre-decode argmax)
SEARCHES = ("tas", LATENCY_METHOD, *VARIANTS)
REFERENCES = ("uniform", "uniform-depth")  # the trivial rule a ratio is compared against, in order

MODES = {
    # tas-latency is left out of --quick: its latency table alone takes minutes on a loaded machine
    "quick": {"models": ["cifar_resnet20"], "ratios": [0.25], "seeds": [0, 1], "limit": 500, "val": 300,
              "test_limit": 1000, "teacher_epochs": 2, "teacher_cap": 4, "budget": 2, "search_epochs": 1, "batch_size": 32,
              "latency_repeats": 20, "uniform_depth": "always",
              "methods": ["tas", "uniform", "uniform-depth", "l1", "synflow"]},
    # a reduced but honest run for one shared CPU thread (about an hour): one cheap model, the two ratios
    # where allocation matters, three seeds
    "cpu": {"models": ["cifar_resnet20"], "ratios": [0.25, 0.12], "seeds": [0, 1, 2], "limit": 5000, "val": 1000,
            "test_limit": 2000, "teacher_epochs": 4, "teacher_cap": 8, "budget": 4, "search_epochs": 1,
            "batch_size": 64, "latency_repeats": 20, "uniform_depth": "auto",
            "methods": ["tas", "uniform", "uniform-depth", "l1", ARCH_ONLY]},
    "full": {"models": ["cifar_resnet56", "cifar_mobilenetv2"], "ratios": [0.5, 0.25, 0.12], "seeds": [0, 1, 2],
             "limit": 20000, "val": 5000, "teacher_epochs": 10, "teacher_cap": 80, "budget": 8, "search_epochs": 2,
             "test_limit": None, "batch_size": 64, "latency_repeats": 50, "uniform_depth": "auto", "methods": list(METHODS)},
}
KEYS = ("limit", "val", "test_limit", "img_size", "teacher_epochs", "teacher_cap", "plateau_delta", "budget", "search_epochs",
        "batch_size", "lr")


# -- data -----------------------------------------------------------------------------------------
class _Split(Subset):
    """Images of the Fashion-MNIST training set at fixed indices, with their ``.targets``."""

    @property
    def targets(self) -> list[int]:
        return [int(self.dataset.targets[i]) for i in self.indices]


def split_indices(targets: np.ndarray, limit: int, val: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Class-balanced ``(train, val)`` indices: ``val`` held-out images, then ``limit`` training images
    from the rest (per class: a seeded shuffle, the first ``val/K`` held out, the next ``limit/K`` kept)."""
    classes = np.unique(targets)
    per_val, per_train = val // len(classes), limit // len(classes)
    train, held = [], []
    for c in classes:
        index = np.flatnonzero(targets == c)
        np.random.default_rng([seed, int(c)]).shuffle(index)
        if per_val + per_train > len(index):
            sys.exit(f"error: class {c} has {len(index)} images, fewer than {per_val} + {per_train} asked")
        held += index[:per_val].tolist()
        train += index[per_val:per_val + per_train].tolist()
    return sorted(train), sorted(held)


def register_dataset(data_dir: str | None, limit: int, val: int) -> None:
    """Register :data:`DATASET`: ``train`` = the kept training images, ``test`` = the validation split."""
    base = tas.data.dataset_info("fashion-mnist")
    targets = np.asarray(tas.data.create_dataset("fashion-mnist", "train", data_dir, augment=False).targets)
    train, held = split_indices(targets, limit, val)

    # tas.data has no public registry call; its decorator is what its own datasets use.
    @tas.data.registry._register(replace(base, name=DATASET))
    def _build(split, _dir, download, augment, info):
        ds = tas.data.create_dataset("fashion-mnist", "train", data_dir, img_size=info.img_size,
                                     augment=augment and split == "train")
        return _Split(ds, train if split == "train" else held)


# -- the bench ------------------------------------------------------------------------------------
class AllocationBench(compare.Bench):
    """compare.Bench on the held-out split, with a teacher trained until it plateaus."""

    keys = KEYS
    dataset = DATASET

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.test_limit = args.test_limit  # the real test set (None: all 10 000 images)
        self.results.setdefault("skipped", {})

    def train_teacher(self, model_name: str, out: Path) -> dict:
        """Cosine runs of E, 2E, 4E… epochs until doubling gains < ``plateau_delta`` val points (or the cap)."""
        from tas.train import run as train_run

        a = self.args
        epochs, runs, stopped = a.teacher_epochs, [], "cap"
        while epochs <= a.teacher_cap:
            run = out / f"e{epochs}"
            if not is_finished_run(run):
                log(f"teacher {model_name}: {epochs} epochs on {a.limit} images (val {a.val})")
                run.mkdir(parents=True, exist_ok=True)
                with open(run / "log.txt", "a") as logf, \
                        contextlib.redirect_stdout(sys.stdout if a.verbose else logf):
                    train_run.train({**self.common(0), "model": model_name, "epochs": epochs, "limit": None,
                                    "batch_size": a.batch_size, "lr": 0.1, "output": str(run), "overwrite": True})
            m = json.loads((run / "metrics.json").read_text())
            runs.append({"epochs": epochs, "val_top1": m["top1"], "run": str(run), "metrics": m})
            log(f"teacher {model_name}: {epochs} epochs -> val top-1 {m['top1']:.2f}%")
            if len(runs) > 1 and runs[-1]["val_top1"] - runs[-2]["val_top1"] < a.plateau_delta:
                stopped = "plateau"
                break
            epochs *= 2
        best = max(runs, key=lambda r: r["val_top1"])
        return {**best["metrics"], "teacher_info": {
            "run": best["run"], "epochs": best["epochs"], "stopped": stopped,
            "plateau": [[r["epochs"], r["val_top1"]] for r in runs],
            "train_wall_s": round(sum(r["metrics"]["wall_time_s"] for r in runs), 1)}}

    def teacher(self, model_name: str) -> dict:
        info = super().teacher(model_name)
        if "val_top1" not in info:  # reported accuracy: the real test set, from the saved predictions
            out = self.teacher_dir(model_name)
            preds, labels = np.load(out / "test_preds.npy"), np.load(out / "test_labels.npy")
            info["val_top1"], info["top1"] = info["top1"], round(100 * float((preds == labels).mean()), 4)
            self.save()
        return info

    def search_epochs(self, method: str) -> int:
        return 0 if method == ARCH_ONLY else super().search_epochs(method)

    def search_overrides(self, method: str) -> dict:
        return VARIANTS.get(method, {})

    def cell_dir(self, model_name: str, ratio: float, seed: int, method: str) -> Path:
        return self.root / model_name / f"r{ratio}" / f"s{seed}" / method

    def distill_overrides(self, method: str) -> dict:
        return {**BORROWERS.get(method, {}), **VARIANT_DISTILL.get(method, {})}

    def cell(self, model_name: str, ratio: float, seed: int, method: str) -> dict:
        if method in BORROWERS:
            self.borrow_search(model_name, ratio, seed, method)
        res = super().cell(model_name, ratio, seed, method)
        res["val_top1"], res["top1"] = res["top1"], res["test_top1"]
        return res

    def borrow_search(self, model_name: str, ratio: float, seed: int, method: str) -> None:
        """Point a :data:`BORROWERS` cell's search at the same seed's ``tas`` search (no second search)."""
        src = self.cell_dir(model_name, ratio, seed, "tas")
        if not (src / "search" / "arch.json").is_file():
            raise TasError(f"{method} needs the tas cell of {model_name} r{ratio} s{seed} first")
        cdir = self.cell_dir(model_name, ratio, seed, method)
        cdir.mkdir(parents=True, exist_ok=True)
        if not (cdir / "search").exists():
            (cdir / "search").symlink_to((src / "search").resolve(), target_is_directory=True)
        if not (cdir / "timing.json").is_file():
            prune_s = json.loads((src / "timing.json").read_text())["prune_s"]
            atomic_write_bytes(cdir / "timing.json", json.dumps({"prune_s": prune_s}).encode())

    def inherited(self, model_name: str) -> None:
        """Each cell's ``inherited_val_top1``: its architecture with the teacher's weights at its kept
        channels, before any training (BatchNorm statistics re-estimated on 20 training batches, as
        the search does before it evaluates), on the validation split. How much of the teacher's
        function an architecture keeps when it starts distilling."""
        todo = [c for c in self.results["cells"].values()
                if c["model"] == model_name and "inherited_val_top1" not in c and Path(c["onnx"]).is_file()]
        if not todo:
            return
        teacher, _ = load_run(self.teacher_dir(model_name))
        loaders = create_loaders(DATASET, data_dir=self.args.data_dir, batch_size=self.args.batch_size,
                                 img_size=self.args.img_size, augment=False)
        for c in todo:
            slim = materialize(teacher, tas.Arch.from_json(Path(c["onnx"]).parent / "search" / "arch.json"))
            torch.manual_seed(0)
            recalibrate_bn(slim, loaders["train"], "cpu")
            c["inherited_val_top1"] = engine.evaluate(slim, loaders["test"], "cpu")["top1"]
        self.save()
        log(f"inherited accuracy of {len(todo)} {model_name} architectures measured")

    def merge(self, other: str) -> None:
        """Take the finished cells of another output made with the same settings (a second process run
        in parallel on other seeds or methods); cells already here are kept."""
        path = Path(other) / "results.json"
        theirs = json.loads(path.read_text())
        if theirs.get("settings") != self.settings:
            sys.exit(f"error: {path} was made with other settings; cannot merge")
        new = {k: c for k, c in theirs["cells"].items() if k not in self.results["cells"] and Path(c["onnx"]).is_file()}
        self.results["cells"].update(new)
        self.save()
        log(f"merged {len(new)} cells from {path}")

    def is_current(self, key: str) -> bool:
        """Whether the cached cell ``key`` can be reused; a search cell whose search predates the
        pre-decode report is dropped (its timing too), so that it is searched and distilled again."""
        if not super().is_current(key):
            return False
        c = self.results["cells"][key]
        if c["method"] in SEARCHES and search_diagnostics(c.get("search_metrics", {}))[0] is None:
            timing = self.cell_dir(c["model"], c["ratio"], c["seed"], c["method"]) / "timing.json"
            timing.unlink(missing_ok=True)
            del self.results["cells"][key]
            return False
        return True


def width_only_minimum(model_name: str, img_size: int) -> float:
    """The smallest FLOPs ratio width-only baselines reach on ``model_name`` (structure only)."""
    from tas.baselines import width_only_minimum as minimum
    from tas.nas.supernet import create_supernet

    model = tas.create_model(model_name, num_classes=10, in_chans=1)
    return minimum(create_supernet(model, input_size=(1, img_size, img_size), model_name=model_name), "flops")


def plan(args, minimum: dict[str, float]) -> list[tuple[str, float, int, str]]:
    """Every (model, ratio, seed, method) cell to run; width-only methods only where they reach the ratio."""
    cells = []
    for m in args.models:
        for r in args.ratios:
            for meth in args.methods:
                if meth == LATENCY_METHOD:
                    continue
                reachable = r >= minimum[m]
                if meth in WIDTH_ONLY and not reachable:
                    continue
                if meth == "uniform-depth" and reachable and args.uniform_depth == "auto":
                    continue
                if meth in BORROWERS and "tas" not in args.methods:
                    continue
                cells += [(m, r, s, meth) for s in args.seeds]
        if LATENCY_METHOD in args.methods:
            cells += [(m, r, s, LATENCY_METHOD) for r in args.latency_ratios for s in args.seeds]
    # seed by seed (a run stopped early still has complete pairs); a borrower follows its seed's tas search
    return sorted(cells, key=lambda c: (c[2], c[3] in BORROWERS))


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


def equal_latency_rows(results: dict, models: list[str], methods: list[str]) -> list[dict]:
    """For each TAS point, every other method's top-1 interpolated at the latency TAS measured."""
    rows = []
    for model in models:
        if "latency_ms" not in results["teachers"].get(model, {}):
            continue
        curves = latency_curves(results, model, methods)
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
    parts = group.split(".")
    if group == "stem":
        return first
    return parts[0] == stage and (len(parts) < 2 or not parts[1].isdigit() or int(parts[1]) < depth)


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
    with_ratio = [r for r in diag if r[4] != "–"]
    with_moves = [r for r in diag if r[6] != "–"]
    quick = (f"*`--quick` checks the machinery only: a teacher of at most {a.teacher_cap} epochs on {a.limit} "
             "images, one ratio, two seeds. Its differences say nothing about the methods.*"
             if a.mode == "quick" else "")
    lines = [
        "# Where allocation matters: TAS against uniform scaling at low FLOPs (issue 14)", "",
        f"Generated by `python benchmarks/allocation.py{'' if a.mode == 'full' else ' --preset ' + a.mode}` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC ({elapsed / 60:.1f} min this invocation; cells cached in "
        f"`{_shown(a.output)}/results.json`): {os.cpu_count()} CPU cores ({platform.machine()}, shared, 1-min "
        f"load {a.load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end), torch {torch.__version__}, "
        f"{a.threads} thread(s).", "",
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
           "`tas-width-filters` the same with widths only; `tas-arch2` takes two architecture steps per weight step."
           " Every other method inherits both weights and channels from the teacher; the search only "
           "chooses the architecture.", ""] if {*BORROWERS, *VARIANTS} & set(a.methods) else []),
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
        "reach the ratio. *val*: the same on the held-out validation split (what any choice here is made on).", "",
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


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="<= 10 min machinery check (cifar_resnet20, tiny subset)")
    p.add_argument("--preset", choices=tuple(MODES), default=None,
                   help="defaults for every unset flag: quick (= --quick), cpu (one thread, ~1-2 h), full (the default)")
    p.add_argument("--models", nargs="+", default=None)
    p.add_argument("--methods", nargs="+", default=None, choices=METHODS)
    p.add_argument("--ratios", type=float, nargs="+", default=None, help="FLOPs fractions kept")
    p.add_argument("--latency-ratios", type=float, nargs="+", default=None,
                   help="tas-latency's measured-latency fractions (default: --ratios)")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--limit", type=int, default=None, help="training images (class-balanced)")
    p.add_argument("--val", type=int, default=None, help="held-out validation images from the training set")
    p.add_argument("--test-limit", type=int, default=None, help="test images reported on (default: all; --quick 1000)")
    p.add_argument("--teacher-epochs", type=int, default=None, help="the teacher's first run length")
    p.add_argument("--teacher-cap", type=int, default=None, help="no teacher run longer than this")
    p.add_argument("--plateau-delta", type=float, default=0.1, help="val points a doubled run must gain")
    p.add_argument("--budget", type=int, default=None, help="post-teacher epochs per method")
    p.add_argument("--search-epochs", type=int, default=None, help="of the budget, TAS's search epochs")
    p.add_argument("--uniform-depth", choices=("auto", "always"), default=None,
                   help="auto: only where width-only methods cannot reach the ratio")
    p.add_argument("--batch-size", type=int, default=None, help="default 64 (--quick: 32)")
    p.add_argument("--lr", type=float, default=0.05, help="distillation learning rate")
    p.add_argument("--latency-repeats", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="training and search device (cpu, cuda, auto); the reported "
                                                  "accuracy and the ONNX timings are on the CPU either way")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--output", default=None, help="default runs/allocation/<mode>")
    p.add_argument("--doc", default=None, help="markdown to write (default docs/benchmarks_allocation[_quick].md; "
                                               "'-': none)")
    p.add_argument("--merge", nargs="+", default=[], metavar="DIR",
                   help="first take the finished cells of these outputs (same settings; e.g. a parallel run)")
    p.add_argument("--report-only", action="store_true",
                   help="run no new cell: measure and report the cached ones (e.g. when time is up)")
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--retime", action="store_true")
    p.add_argument("--no-install", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.quick and args.preset not in (None, "quick"):
        sys.exit("error: --quick is --preset quick; give one of them")
    args.mode = "quick" if args.quick else (args.preset or "full")
    for key, value in MODES[args.mode].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.img_size = 28
    args.latency_ratios = args.latency_ratios or list(args.ratios)
    if not 1 <= args.search_epochs < args.budget:
        sys.exit("error: need 1 <= --search-epochs < --budget (TAS must distil at least one epoch)")
    if args.teacher_epochs > args.teacher_cap:
        sys.exit("error: --teacher-epochs must be <= --teacher-cap")
    args.output = args.output or str(REPO / "runs" / "allocation" / args.mode)
    suffix = "" if args.mode == "full" else f"_{args.mode}"
    args.doc = args.doc or str(REPO / "docs" / f"benchmarks_allocation{suffix}.md")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    prepare_run(args)
    register_dataset(args.data_dir, args.limit, args.val)
    start = time.perf_counter()
    bench = AllocationBench(args)
    for other in args.merge:
        bench.merge(other)
    minimum = {m: width_only_minimum(m, args.img_size) for m in args.models}
    cells = plan(args, minimum)
    log(f"{args.mode}: {len(cells)} cells, budget {args.budget} epochs, {args.limit} images + {args.val} val at 28 px; "
        "width-only minimum " + ", ".join(f"{m} {v:.3f}" for m, v in minimum.items()) + f" -> {args.output}")
    bench.run_cells(args.models, cells, start, lambda res: (
        f"test top-1 {res['top1']:.2f}% (val {res['val_top1']:.2f}), FLOPs {res['flops_ratio']:.3f}, "
        f"depths {res['depths']}"), skip=(TasError,), after_model=bench.inherited, compute=not args.report_only)
    png, why = None, None
    if args.doc != "-":
        png = Path(args.doc).with_suffix(".png")
        why = compare.plot(bench.results, args.models, list(args.methods), png, install=not args.no_install,
                           axes_x=("flops", "latency"), title="{model}, Fashion-MNIST 28 px")
        if why:
            png = None
    text = render(args, bench.results, png, why, time.perf_counter() - start)
    if args.doc != "-" and Path(args.doc).is_file():  # hand-written analysis below the marker survives a rerun
        old = Path(args.doc).read_text()
        if NOTES in old:
            text += "\n" + old[old.index(NOTES):]
    log("\n" + text)
    if args.doc != "-":
        write_report(args.doc, text)
        log(f"wrote {args.doc}" + (f" and {png}" if png else ""))
    log(f"done in {(time.perf_counter() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
