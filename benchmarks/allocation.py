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
    python benchmarks/allocation.py --device cuda --jobs 12   # on a GPU: 12 cells at a time (docs/benchmarks_gpu.md)
    python benchmarks/allocation.py --device cuda --jobs 8 --report-only   # the teachers alone, all runs at once

Resumable like compare.py (``<output>/results.json``). Not a test: nothing here asserts.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train.py

import argparse  # noqa: E402
import shlex  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
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
from benchkit import check_jobs_and_device, log, prepare_run, start_or_resume, write_report  # noqa: E402
from tas.io.checkpoint import atomic_write_bytes  # noqa: E402
from compare import LATENCY_METHOD  # noqa: E402
from tas.errors import TasError  # noqa: E402
from tas.io.rundir import is_finished_run  # noqa: E402
from tas.prune.load import load_run  # noqa: E402
from tas.data import create_loaders  # noqa: E402
from tas.nas.searcher import recalibrate_bn  # noqa: E402
from tas.prune.materialize import materialize  # noqa: E402
from tas.train import engine  # noqa: E402

from allocation_methods import (ARCH_ONLY, BORROWERS, DERIVED, FOLLOWERS, METHODS, SEARCHES,  # noqa: E402
                                VARIANT_DISTILL, VARIANT_SEARCH_SCALE, VARIANTS, WIDTH_ONLY)
# the analysis lives in allocation_report; its names stay reachable as allocation.<name> (tests, sibling benchmarks)
from allocation_report import (NOTES, equal_latency_rows, paired_rows, render,  # noqa: E402, F401
                               search_diagnostics, stage_flops, _in_stage)

DATASET = "fashion-mnist-alloc"
MODES = {
    # tas-latency is left out of --quick: its latency table alone takes minutes on a loaded machine
    "quick": {"models": ["cifar_resnet20"], "ratios": [0.25], "seeds": [0, 1], "limit": 500, "val": 300,
              "test_limit": 1000, "teacher_epochs": 2, "teacher_cap": 4, "budget": 2, "search_epochs": 1, "batch_size": 32,
              "lr": 0.05, "latency_repeats": 20, "uniform_depth": "always",
              "methods": ["tas", "uniform", "uniform-depth", "l1", "synflow"]},
    # a reduced but honest run for one shared CPU thread (about an hour): one cheap model, the two ratios
    # where allocation matters, three seeds
    "cpu": {"models": ["cifar_resnet20"], "ratios": [0.25, 0.12], "seeds": [0, 1, 2], "limit": 5000, "val": 1000,
            "test_limit": 2000, "teacher_epochs": 4, "teacher_cap": 8, "budget": 4, "search_epochs": 1,
            "batch_size": 64, "lr": 0.05, "latency_repeats": 20, "uniform_depth": "auto",
            "methods": ["tas", "uniform", "uniform-depth", "l1", ARCH_ONLY]},
    # batch 256 at lr 0.02: from a 40-epoch cifar_resnet56 teacher, lr 0.1 cost every method at 0.12 (2.6 points on
    # average) and reversed their order (docs/benchmarks_allocation_20k_cpu.md)
    "full": {"models": ["cifar_resnet56", "cifar_mobilenetv2"], "ratios": [0.5, 0.25, 0.12], "seeds": [0, 1, 2],
             "limit": 20000, "val": 5000, "teacher_epochs": 10, "teacher_cap": 80, "budget": 8, "search_epochs": 2,
             "test_limit": None, "batch_size": 256, "lr": 0.02, "latency_repeats": 50, "uniform_depth": "auto",
             "methods": list(METHODS)},
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

    @classmethod
    def setup_worker(cls, args: argparse.Namespace) -> None:
        super().setup_worker(args)
        register_dataset(args.data_dir, args.limit, args.val)

    def depends_on(self, model: str, ratio: float, seed: int, method: str) -> str | None:
        return self.key(model, ratio, seed, "tas") if method in FOLLOWERS else None

    def teacher_lengths(self) -> list[int]:
        """The teacher runs' epochs: E, 2E, 4E… up to the cap."""
        lengths = [self.args.teacher_epochs]
        while lengths[-1] * 2 <= self.args.teacher_cap:
            lengths.append(lengths[-1] * 2)
        return lengths

    def pretrain(self, models: list[str], pool) -> None:
        """Every teacher run of every model at once (each trains from scratch, so none waits for
        another); :meth:`train_teacher` then reads them and applies the plateau rule as it would
        have. Runs past the plateau are trained for nothing: the price of finishing in the time of
        the longest one."""
        from cellpool import call_in_pool

        runs = [(m, e, self.root / m / "teacher" / f"e{e}") for m in models
                if m not in self.results["teachers"] for e in self.teacher_lengths()]
        futures = [call_in_pool(pool, "train_teacher_run", *r) for r in runs if not is_finished_run(r[2])]
        log(f"{len(futures)} teacher runs in worker processes")
        for f in futures:
            f.result()

    def train_teacher_run(self, model_name: str, epochs: int, run: Path) -> None:
        """One cosine teacher run of ``epochs`` epochs into ``run``."""
        from tas.train import run as train_run

        a = self.args
        log(f"teacher {model_name}: {epochs} epochs on {a.limit} images (val {a.val})")
        run.mkdir(parents=True, exist_ok=True)
        # limit None: the dataset registered for the bench is the split, so the split is part of the run
        cfg = start_or_resume(run, {**self.common(0), "model": model_name, "epochs": epochs, "limit": None,
                                    "batch_size": a.batch_size, "lr": 0.1}, split=[a.limit, a.val])
        with open(run / "log.txt", "a") as logf, contextlib.redirect_stdout(sys.stdout if a.verbose else logf):
            train_run.train(cfg)

    def train_teacher(self, model_name: str, out: Path) -> dict:
        """Cosine runs of E, 2E, 4E… epochs until doubling gains < ``plateau_delta`` val points (or the cap)."""
        a = self.args
        runs, stopped = [], "cap"
        for epochs in self.teacher_lengths():
            run = out / f"e{epochs}"
            if not is_finished_run(run):
                self.train_teacher_run(model_name, epochs, run)
            m = json.loads((run / "metrics.json").read_text())
            runs.append({"epochs": epochs, "val_top1": m["top1"], "run": str(run), "metrics": m})
            log(f"teacher {model_name}: {epochs} epochs -> val top-1 {m['top1']:.2f}%")
            if len(runs) > 1 and runs[-1]["val_top1"] - runs[-2]["val_top1"] < a.plateau_delta:
                stopped = "plateau"
                break
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

    def search_epochs(self, method: str) -> float:
        return 0 if method == ARCH_ONLY else super().search_epochs(method) * VARIANT_SEARCH_SCALE.get(method, 1)

    def search_overrides(self, method: str) -> dict:
        return VARIANTS.get(method, {})

    def cell_dir(self, model_name: str, ratio: float, seed: int, method: str) -> Path:
        return self.root / model_name / f"r{ratio}" / f"s{seed}" / method

    def distill_overrides(self, method: str) -> dict:
        return {**BORROWERS.get(method, {}), **VARIANT_DISTILL.get(method, {})}

    def cell(self, model_name: str, ratio: float, seed: int, method: str) -> dict:
        if method in BORROWERS:
            self.borrow_search(model_name, ratio, seed, method)
        elif method in DERIVED:
            self.derive_search(model_name, ratio, seed, method)
        res = super().cell(model_name, ratio, seed, method)
        res["val_top1"], res["top1"] = res["top1"], res["test_top1"]
        return res

    def borrow_search(self, model_name: str, ratio: float, seed: int, method: str) -> None:
        """Point a :data:`BORROWERS` cell's search at the same seed's ``tas`` search (no second search)."""
        src = self.tas_search(model_name, ratio, seed, method)
        cdir = self.cell_dir(model_name, ratio, seed, method)
        cdir.mkdir(parents=True, exist_ok=True)
        if not (cdir / "search").exists():
            (cdir / "search").symlink_to((src / "search").resolve(), target_is_directory=True)
        if not (cdir / "timing.json").is_file():
            self.charge_search(src, cdir)

    def derive_search(self, model_name: str, ratio: float, seed: int, method: str) -> None:
        """Write a :data:`DERIVED` cell's architecture: its baseline at the depths of the same seed's
        ``tas`` search, charged that search's time."""
        from tas.baselines import run_baseline

        src = self.tas_search(model_name, ratio, seed, method)
        cdir = self.cell_dir(model_name, ratio, seed, method)
        if (cdir / "timing.json").is_file() and (cdir / "search" / "arch.json").is_file():
            return
        cdir.mkdir(parents=True, exist_ok=True)
        with open(cdir / "log.txt", "a") as logf, contextlib.redirect_stdout(sys.stdout if self.args.verbose else logf):
            run_baseline({**self.common(seed), "teacher": str(self.teacher_dir(model_name)), "flops_ratio": ratio,
                          "method": DERIVED[method], "depths": str(src / "search" / "arch.json"),
                          "output": str(cdir / "search"), "overwrite": True, "batch_size": self.args.batch_size,
                          "limit": self.args.limit})
        self.charge_search(src, cdir)

    @staticmethod
    def charge_search(src: Path, cdir: Path) -> None:
        """Charge the cell ``cdir`` the search time of the ``tas`` cell ``src`` it builds on."""
        prune_s = json.loads((src / "timing.json").read_text())["prune_s"]
        atomic_write_bytes(cdir / "timing.json", json.dumps({"prune_s": prune_s}).encode())

    def tas_search(self, model_name: str, ratio: float, seed: int, method: str) -> Path:
        """The same seed's ``tas`` cell directory, which ``method`` needs searched first."""
        src = self.cell_dir(model_name, ratio, seed, "tas")
        if not (src / "search" / "arch.json").is_file():
            raise TasError(f"{method} needs the tas cell of {model_name} r{ratio} s{seed} first")
        return src

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
            arch = tas.Arch.from_json(Path(c["onnx"]).parent / "search" / "arch.json")
            c["inherited_val_top1"] = inherited_top1(teacher, arch, loaders, self.device)
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


def inherited_top1(teacher: torch.nn.Module, arch: "tas.Arch", loaders: dict, device: torch.device | str) -> float:
    """Top-1 on ``loaders["test"]`` of ``arch`` with ``teacher``'s weights at its kept channels, its
    BatchNorm statistics re-estimated on the first 20 batches of ``loaders["train"]``. The same 20
    batches for every architecture (``seed=0``: without it the loader's generator carried on from one
    measurement to the next, and a figure depended on how many were measured before it)."""
    slim = materialize(teacher, arch).to(device)
    recalibrate_bn(slim, loaders["train"], device, seed=0)
    return engine.evaluate(slim, loaders["test"], device)["top1"]


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
                if meth in FOLLOWERS and "tas" not in args.methods:
                    continue
                cells += [(m, r, s, meth) for s in args.seeds]
        if LATENCY_METHOD in args.methods:
            cells += [(m, r, s, LATENCY_METHOD) for r in args.latency_ratios for s in args.seeds]
    # seed by seed (a run stopped early still has complete pairs); a borrower follows its seed's tas search
    return sorted(cells, key=lambda c: (c[2], c[3] in FOLLOWERS))


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
    p.add_argument("--batch-size", type=int, default=None, help="the preset's (cpu 64, quick 32, full 256)")
    p.add_argument("--lr", type=float, default=None, help="distillation learning rate (the preset's)")
    p.add_argument("--latency-repeats", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jobs", type=int, default=1,
                   help="cells (and teacher runs) at once, each in a worker process of --threads threads "
                        "(on a GPU: several small networks share it)")
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
    check_jobs_and_device(p, args)
    args.command = shlex.join(["python", "benchmarks/allocation.py", *(sys.argv[1:] if argv is None else argv)])
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
        f"depths {res['depths']}"), skip=(TasError,), after_model=bench.inherited, compute=not args.report_only,
        jobs=args.jobs)
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
