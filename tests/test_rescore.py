"""benchmarks/rescore.py: the wide validation split is unseen by the run, and the report pairs by seed."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import allocation  # noqa: E402
import rescore  # noqa: E402


def test_the_wide_split_is_class_balanced_and_outside_the_runs_images():
    targets = np.repeat(np.arange(4), 50)  # 4 classes of 50
    np.random.default_rng(0).shuffle(targets)
    train, held = allocation.split_indices(targets, limit=40, val=20)
    wide = rescore.wide_indices(targets, limit=40, val=20, wide=100)
    assert len(wide) == len(set(wide)) == 100
    assert not set(wide) & (set(train) | set(held))
    assert np.bincount(targets[wide]).tolist() == [25, 25, 25, 25]
    assert wide == rescore.wide_indices(targets, limit=40, val=20, wide=100)  # the same images every time
    # 50 a class, 15 used by the run: 35 left, so 40 a class is more than there is
    with pytest.raises(SystemExit, match="fewer than the 40"):
        rescore.wide_indices(targets, limit=40, val=20, wide=160)


def test_the_report_pairs_each_method_with_the_same_seeds_reference(tmp_path):
    small = {f"m/r0.25/s{s}/{meth}": {"top1": t, "val_top1": v} for s, meth, t, v in
             [(0, "tas", 80.0, 81.0), (1, "tas", 82.0, 80.0), (2, "tas", 81.0, 79.0),
              (0, "uniform", 81.0, 80.0), (1, "uniform", 81.0, 81.0), (2, "uniform", 83.0, 80.0)]}
    (tmp_path / "results.json").write_text(json.dumps({"cells": small, "teachers": {}}))
    large = {k: {"test": c["top1"] + 0.5 * (k.endswith("tas")), "wide_val": c["val_top1"] - 1.0, "val": 0.0}
             for k, c in small.items()}
    large["m/teacher"] = {"test": 90.0, "wide_val": 91.0, "val": 92.0}
    cache = {"settings": {"val": 1000, "wide_val": 20000}, "cells": large}
    text = rescore.report(tmp_path, cache, None)
    row = next(line for line in text.splitlines() if line.startswith("| m | 0.25 | tas | uniform |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # by hand: test diffs -1, +1, -2 (mean -0.67); val diffs +1, -1, -1 (mean -0.33); the large test +0.5 each
    assert cells[4].startswith("3")
    assert cells[5].startswith("-0.33 ") and cells[6].startswith("-0.33 ")  # wide val: both sides -1, same diffs
    assert cells[7].startswith("-0.67 ") and cells[8].startswith("-0.17 ")
    assert "Teacher m: wide val 91.00, test 90.00" in text


def test_pairs_are_parsed_and_checked():
    assert rescore.parse_pairs(["a:b", "tas-rule:tas"]) == [("a", "b"), ("tas-rule", "tas")]
    assert rescore.parse_pairs(None) is None
    with pytest.raises(SystemExit, match="METHOD:AGAINST"):
        rescore.parse_pairs(["tas"])


def test_scores_for_another_wide_split_are_never_overwritten(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"settings": {"limit": 40, "val": 20}, "cells": {}, "teachers": {}}))
    kept = json.dumps({"settings": {"wide_val": 500, "wide_seed": rescore.WIDE_SEED, "limit": 40, "val": 20},
                       "cells": {"m/r0.25/s0/tas": {"test": 80.0, "wide_val": 81.0, "val": 82.0}}})
    (tmp_path / "rescore.json").write_text(kept)
    with pytest.raises(SystemExit, match="pass its --wide-val") as exc:
        rescore.score(tmp_path, wide=1000, data_dir=None)
    assert exc.value.code == 2
    assert (tmp_path / "rescore.json").read_text() == kept
