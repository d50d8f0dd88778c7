"""How much of an allocation comparison is the evaluation's noise? Rescore its networks on more images.

``benchmarks/allocation.py`` reports each cell on a held-out validation split of ``--val`` training
images (1000 in the ``cpu`` preset) and on ``--test-limit`` test images (2000). One accuracy on 1000
images carries a binomial sd of about 1.1 points; a paired difference between two networks on the
same images, about √(discordant share / n): ~1 point where they disagree on a tenth of the images.
That is the size of the effects the benchmark looks for. This script reloads every finished cell's
slim network (weights and architecture, strictly) and the teacher, and scores each on

* the **full test set** (all 10 000 images), and
* a **wide validation split**: ``--wide-val`` class-balanced training images that neither the run's
  training subset nor its validation split holds (Fashion-MNIST has 6000 a class; the ``cpu`` preset
  uses 600), so they are as unseen as the test set and may be used to choose,

then reports, for each pair of methods at a ratio, the paired per-seed differences on the small and
the large sets side by side. The training seed's noise is in both; the evaluation's shrinks by √(n
large / n small). Where the sd of the per-seed differences falls with it, the small sets' noise was
a large share of what the benchmark read.

    python benchmarks/rescore.py --output runs/allocation/cpu_rep            # every pair against tas and the rule
    python benchmarks/rescore.py --output runs/allocation/cpu_rep --pairs tas-rule:tas uniform:tas

Cached in ``<output>/rescore.json`` (a network is scored once; rerun to add new cells; a cache of another
``--wide-val`` is refused, never overwritten). Not a test.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import tas  # noqa: E402  (registers the cifar models with timm)
import tas.data  # noqa: E402
from tas.io.checkpoint import atomic_write_json  # noqa: E402
from tas.prune.load import load_run  # noqa: E402
from tas.train import engine  # noqa: E402

from allocation import split_indices  # noqa: E402
from allocation_methods import REFERENCES  # noqa: E402
from benchkit import ensure_dataset, log, write_report  # noqa: E402
from benchstats import paired_differences  # noqa: E402

#: the seed of the wide split's draw (the run's own split uses 0)
WIDE_SEED = 1


class InputError(SystemExit):
    """Bad input to this script: ``main`` prints it as one line and exits 2."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


#: the suffix of a teacher's key in the cache (a cell's is model/ratio/seed/method)
TEACHER = "/teacher"


def wide_indices(targets: np.ndarray, limit: int, val: int, wide: int) -> list[int]:
    """Class-balanced ``wide`` training indices outside the run's ``(limit, val)`` split."""
    train, held = split_indices(targets, limit, val)
    used = set(train) | set(held)
    classes = np.unique(targets)
    per = wide // len(classes)
    out: list[int] = []
    for c in classes:
        free = np.array([i for i in np.flatnonzero(targets == c) if i not in used])
        if per > len(free):
            raise InputError(f"class {c} has {len(free)} unused training images, fewer than the {per} --wide-val asks")
        np.random.default_rng([WIDE_SEED, int(c)]).shuffle(free)
        out += free[:per].tolist()
    return sorted(out)


def stack(dataset, indices: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels of ``dataset`` (at ``indices``) as two tensors, transformed once."""
    idx = range(len(dataset)) if indices is None else indices
    images, labels = zip(*(dataset[i] for i in idx))
    return torch.stack(images), torch.tensor(labels)


def top1(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, device: str = "cpu") -> float:
    """Top-1 (percent) of ``model`` on the images (:func:`tas.train.engine.evaluate`, batches of 500)."""
    batches = list(zip(images.split(500), labels.split(500)))
    return engine.evaluate(model.to(device), batches, device)["top1"]


def cells_to_score(root: Path, results: dict) -> dict[str, Path]:
    """Every finished cell's slim run and every teacher run, by results key."""
    runs = {key: root / key / "slim" for key in results["cells"]}
    runs.update({m + TEACHER: REPO / t["run"] for m, t in results.get("teachers", {}).items() if "run" in t})
    return {k: r for k, r in runs.items() if (r / "model.safetensors").is_file()}


def score(root: Path, wide: int, data_dir: str | None, device: str = "cpu") -> dict:
    """Score every cell not yet in ``<root>/rescore.json`` on the full test set and the wide split."""
    results = json.loads((root / "results.json").read_text())
    path = root / "rescore.json"
    settings = {"wide_val": wide, "wide_seed": WIDE_SEED, "limit": results["settings"]["limit"],
                "val": results["settings"]["val"]}
    cache = json.loads(path.read_text()) if path.is_file() else {"settings": settings, "cells": {}}
    if cache.get("settings") != settings:  # never overwrite another split's scores
        raise InputError(f"{path} holds scores for {cache.get('settings')}, not {settings}: pass its --wide-val "
                         f"or move it away")
    todo = {k: r for k, r in cells_to_score(root, results).items() if k not in cache["cells"]}
    if not todo:
        return cache
    train_set = tas.data.create_dataset("fashion-mnist", "train", data_dir, augment=False)
    targets = np.asarray(train_set.targets)
    sets = {"test": stack(tas.data.create_dataset("fashion-mnist", "test", data_dir)),
            "wide_val": stack(train_set, wide_indices(targets, settings["limit"], settings["val"], wide)),
            # the run's own split, scored again: a check that the networks and images load as the runs had them
            "val": stack(train_set, split_indices(targets, settings["limit"], settings["val"])[1])}
    log(f"{root}: {len(todo)} networks on {len(sets['test'][1])} test and {len(sets['wide_val'][1])} wide-val images")
    for i, (key, run) in enumerate(sorted(todo.items()), 1):
        model, _ = load_run(run)
        cache["cells"][key] = {name: round(top1(model, *xy, device=device), 4) for name, xy in sets.items()}
        reported = {**results["cells"], **{m + TEACHER: t for m, t in results["teachers"].items()}}[key].get("val_top1")
        if reported is not None and abs(reported - cache["cells"][key]["val"]) > 0.05:
            raise InputError(f"{key} scores {cache['cells'][key]['val']:.2f} on its own validation split, "
                             f"results.json says {reported:.2f}: the network or the images do not load as the run had them")
        atomic_write_json(path, cache)  # resumable: each network once
        log(f"[{i}/{len(todo)}] {key}: test {cache['cells'][key]['test']:.2f}, wide val {cache['cells'][key]['wide_val']:.2f}")
    return cache


def by_seed(cells: dict, model: str, ratio: str, method: str, field: str) -> dict[int, float]:
    out = {}
    for key, c in cells.items():
        m, r, s, meth = key.split("/")
        if (m, r, meth) == (model, ratio, method) and c.get(field) is not None:
            out[int(s[1:])] = c[field]
    return out


def default_pairs(methods: set[str]) -> list[tuple[str, str]]:
    """Every method against ``tas``, and every method against the first trivial rule present."""
    ref = next((r for r in REFERENCES if r in methods), None)
    pairs = [(m, "tas") for m in sorted(methods) if "tas" in methods and m not in ("tas", ref)]
    return pairs + [(m, ref) for m in sorted(methods) if ref is not None and m != ref]


def fmt(d: dict | None) -> str:
    if d is None:
        return "–"
    if d["lo"] is None:
        return f"{d['mean']:+.2f}"
    return f"{d['mean']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}] (sd {d['sd']:.2f})"


def report(root: Path, cache: dict, pairs: list[tuple[str, str]] | None) -> str:
    """The paired differences on the small sets (``results.json``) and the large ones, side by side."""
    results = json.loads((root / "results.json").read_text())["cells"]
    small = {k: {"val": c.get("val_top1"), "test": c.get("top1")} for k, c in results.items()}
    large = {k: c for k, c in cache["cells"].items() if not k.endswith(TEACHER)}
    cache = {**cache, "teachers": {k[:-len(TEACHER)]: c for k, c in cache["cells"].items() if k.endswith(TEACHER)}}
    s = cache["settings"]
    lines = [f"`{root}`: small sets = the run's validation split ({s['val']} images) and its test images; "
             f"large = a wide validation split ({s['wide_val']} unused training images) and all 10 000 test images.",
             "",
             "| model | ratio | method | against | seeds | Δ val (small) | Δ wide val (large) | Δ test (small) | Δ test (large) |",
             "|---|---|---|---|---|---|---|---|---|"]
    groups = sorted({tuple(k.split("/")[:2]) for k in results})
    for model, ratio in groups:
        methods = {k.split("/")[3] for k in results if k.startswith(f"{model}/{ratio}/")}
        for a, b in pairs or default_pairs(methods):
            if a not in methods or b not in methods:
                continue
            d = [paired_differences(by_seed(src, model, ratio, a, f), by_seed(src, model, ratio, b, f))
                 for src, f in ((small, "val"), (large, "wide_val"), (small, "test"), (large, "test"))]
            n = d[1]["n"] if d[1] else 0
            lines.append(f"| {model} | {ratio[1:]} | {a} | {b} | {n} | " + " | ".join(fmt(x) for x in d) + " |")
    lines += ["", "| model | ratio | method | seeds | wide val top-1 (mean ± sd) | test top-1, all 10 000 (mean ± sd) |",
              "|---|---|---|---|---|---|"]
    for model, ratio in groups:
        for meth in sorted({k.split("/")[3] for k in results if k.startswith(f"{model}/{ratio}/")}):
            w, t = by_seed(large, model, ratio, meth, "wide_val"), by_seed(large, model, ratio, meth, "test")
            if len(w) > 1:
                lines.append(f"| {model} | {ratio[1:]} | {meth} | {len(w)} | {statistics.fmean(w.values()):.2f} ± "
                             f"{statistics.stdev(w.values()):.2f} | {statistics.fmean(t.values()):.2f} ± "
                             f"{statistics.stdev(t.values()):.2f} |")
    lines += ["", *(f"Teacher {m}: wide val {c['wide_val']:.2f}, test {c['test']:.2f}, its own validation split "
                    f"{c['val']:.2f}." for m, c in sorted(cache["teachers"].items()))]
    return "\n".join(lines) + "\n"


def parse_pairs(values: list[str] | None) -> list[tuple[str, str]] | None:
    """``METHOD:AGAINST`` strings as pairs (None: the default pairs)."""
    bad = [v for v in values or [] if v.count(":") != 1]
    if bad:
        raise InputError(f"--pairs takes METHOD:AGAINST, got {' '.join(bad)}")
    return [tuple(v.split(":")) for v in values] if values else None  # type: ignore[misc]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", nargs="+", required=True, help="allocation.py output directories (results.json)")
    p.add_argument("--wide-val", type=int, default=20000, help="unused training images to score on (class-balanced)")
    p.add_argument("--pairs", nargs="+", default=None, metavar="METHOD:AGAINST",
                   help="pairs to report (default: every method against tas and against the trivial rule)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="where the networks run (cpu, cuda)")
    p.add_argument("--doc", default="-", help="markdown file to write the tables to ('-': print only)")
    args = p.parse_args(argv)
    if args.wide_val < 10:
        p.error("--wide-val must be at least one image a class")
    for out in map(Path, args.output):
        if not (out / "results.json").is_file():
            p.error(f"{out} has no results.json (an allocation.py --output directory)")
    torch.set_num_threads(args.threads)
    start, text = time.time(), []
    try:
        pairs = parse_pairs(args.pairs)
        ensure_dataset(args.data_dir)
        for out in map(Path, args.output):
            text.append(report(out, score(out, args.wide_val, args.data_dir, args.device), pairs))
    except InputError as e:
        print(f"rescore.py: error: {e}", file=sys.stderr)
        return 2
    body = "\n".join(text)
    print(body)
    if args.doc != "-":
        write_report(args.doc, f"Generated by `python benchmarks/rescore.py {' '.join(argv or sys.argv[1:])}` "
                               f"({math.ceil((time.time() - start) / 60)} min).\n\n{body}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
