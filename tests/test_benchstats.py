"""The benchmarks' statistics (benchmarks/benchstats.py) and allocation.py's analysis, on hand-computed cases."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import allocation  # noqa: E402
import tas  # noqa: E402
from tas.baselines import create_baseline_arch  # noqa: E402
from benchstats import interp_at, paired_differences, t_quantile_975  # noqa: E402


def test_paired_differences_by_hand():
    a = {0: 88.0, 1: 87.5, 2: 88.3}
    b = {0: 87.0, 1: 87.7, 2: 87.3, 3: 99.0}  # seed 3 has no partner: dropped, not imputed
    d = paired_differences(a, b)
    # diffs 1.0, -0.2, 1.0: mean 0.6; squared deviations .16 + .64 + .16 = .96, sd = sqrt(.96 / 2);
    # standard error sqrt(.48 / 3) = 0.4; t_{0.975, 2} = 4.303, so the half-width is 1.7212
    assert d["n"] == 3
    assert d["mean"] == pytest.approx(0.6)
    assert d["sd"] == pytest.approx(0.48 ** 0.5)
    assert d["half_width"] == pytest.approx(4.303 * 0.4)
    assert (d["lo"], d["hi"]) == (pytest.approx(0.6 - 1.7212), pytest.approx(0.6 + 1.7212))


def test_paired_differences_degenerate_cases():
    assert paired_differences({0: 1.0}, {1: 2.0}) is None
    one = paired_differences({0: 88.0, 1: 87.0}, {0: 87.5})
    assert one["n"] == 1 and one["mean"] == pytest.approx(0.5) and one["lo"] is None


def test_t_quantiles():
    # published t_{0.975, df}
    for df, t in ((1, 12.706), (4, 2.776), (10, 2.228), (30, 2.042), (40, 2.021), (60, 2.000), (120, 1.980)):
        assert t_quantile_975(df) == pytest.approx(t, abs=1.5e-3), df
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_interp_at():
    pts = [(0.5, 86.0, 0.5), (0.2, 80.0, 0.12), (0.4, 85.0, 0.25)]  # unsorted on purpose
    assert interp_at(pts, 0.3) == pytest.approx(82.5)
    assert interp_at(pts, 0.45) == pytest.approx(85.5)
    assert interp_at(pts, 0.5) == pytest.approx(86.0)
    assert interp_at(pts, 0.1) is None and interp_at(pts, 0.6) is None  # never extrapolated
    assert interp_at([(0.3, 70.0)], 0.3) == 70.0 and interp_at([(0.3, 70.0)], 0.31) is None


def _cell(method, ratio, seed, top1, latency_ms=None):
    c = {"model": "m", "method": method, "ratio": ratio, "seed": seed, "top1": top1, "flops_ratio": ratio}
    if latency_ms is not None:
        c["latency_ms"] = latency_ms
    return c


def test_paired_rows_use_uniform_depth_where_uniform_cannot_go():
    cells = [_cell("uniform", 0.5, s, 90.0 + s) for s in (0, 1)]
    cells += [_cell("tas", 0.5, s, 90.5 + s) for s in (0, 1)]
    cells += [_cell("uniform-depth", r, s, 85.0) for r in (0.5, 0.12) for s in (0, 1)]  # `always` mode
    cells += [_cell("tas", 0.12, 0, 86.0), _cell("tas", 0.12, 1, 87.0)]
    results = {"cells": {str(i): c for i, c in enumerate(cells)}, "teachers": {}}
    rows = {(r["ratio"], r["method"]): r for r in allocation.paired_rows(results, ["m"], [0.5, 0.12], ["tas", "uniform-depth"])}
    assert rows[(0.5, "tas")]["reference"] == "uniform" and rows[(0.5, "tas")]["mean"] == pytest.approx(0.5)
    assert rows[(0.5, "tas")]["sd"] == pytest.approx(0.0)
    assert rows[(0.5, "uniform-depth")]["diffs"] == [-5.0, -6.0]  # compared to uniform too
    low = rows[(0.12, "tas")]
    assert low["reference"] == "uniform-depth" and low["diffs"] == [1.0, 2.0]
    assert low["half_width"] == pytest.approx(12.706 * (0.5 ** 0.5) / 2 ** 0.5)


def test_equal_latency_interpolates_each_baseline_at_the_tas_latency():
    cells = [_cell("uniform", 0.5, 0, 90.0, 6.0), _cell("uniform", 0.25, 0, 86.0, 4.0),
             _cell("l1", 0.5, 0, 89.0, 6.0), _cell("tas", 0.25, 0, 88.0, 4.5)]
    results = {"cells": {str(i): c for i, c in enumerate(cells)}, "teachers": {"m": {"latency_ms": 10.0}}}
    (row,) = allocation.equal_latency_rows(results, ["m"], ["tas", "uniform", "l1"])
    assert row["latency_ratio"] == pytest.approx(0.45) and row["top1"] == 88.0
    assert row["others"]["uniform"] == pytest.approx(87.0)  # 86 + (90 - 86) * (0.45 - 0.4) / (0.6 - 0.4)
    assert row["others"]["l1"] is None  # one point at 0.6: 0.45 is outside its range
    assert row["best"] == "uniform" and row["lead"] == pytest.approx(1.0)
    assert "uniform rule" not in row["others"]  # no uniform-depth: no joint curve


def test_equal_latency_joins_uniform_and_uniform_depth_into_one_rule():
    # TAS at 0.3 of the teacher's latency: below uniform's range, above uniform-depth's
    cells = [_cell("uniform", 0.5, 0, 90.0, 6.0), _cell("uniform", 0.25, 0, 86.0, 4.0),
             _cell("uniform-depth", 0.12, 0, 84.0, 2.0), _cell("tas", 0.25, 0, 86.0, 3.0)]
    results = {"cells": {str(i): c for i, c in enumerate(cells)}, "teachers": {"m": {"latency_ms": 10.0}}}
    (row,) = allocation.equal_latency_rows(results, ["m"], ["tas", "uniform", "uniform-depth"])
    assert row["others"]["uniform"] is None and row["others"]["uniform-depth"] is None
    assert row["others"]["uniform rule"] == pytest.approx(85.0)  # 84 + (86 - 84) * (0.3 - 0.2) / (0.4 - 0.2)
    assert row["best"] == "uniform rule" and row["lead"] == pytest.approx(1.0)


def test_search_diagnostics_read_defensively():
    assert allocation.search_diagnostics({}) == (None, None)
    assert allocation.search_diagnostics({"projection_steps": 3, "flops_ratio": 0.49}) == (None, 3)
    assert allocation.search_diagnostics({"decode_moves": 0, "pre_decode_ratio": 0.48}) == (0.48, 0)
    assert allocation.search_diagnostics({"final_argmax_ratio": 0.47}) == (0.47, None)


def _bench(tmp_path):
    return allocation.AllocationBench(allocation.parse_args(["--preset", "cpu", "--output", str(tmp_path / "b")]))


def _cached(bench, tmp_path, method, search_metrics):
    """A finished cell of ``method`` in ``bench``'s cache: its ONNX file and timing.json exist."""
    onnx = tmp_path / f"{method}.onnx"
    onnx.write_bytes(b"x")
    cdir = bench.cell_dir("m", 0.25, 0, method)
    cdir.mkdir(parents=True)
    (cdir / "timing.json").write_text('{"prune_s": 1.0, "distill_s": 2.0}')
    key = f"m/r0.25/s0/{method}"
    bench.results["cells"][key] = {**_cell(method, 0.25, 0, 80.0), "onnx": str(onnx), "search_metrics": search_metrics}
    return key, cdir / "timing.json"


def test_a_search_cell_cached_before_the_pre_decode_report_is_searched_again(tmp_path):
    """The --quick report showed '0/2 cells report the ratio': its tas cells were cached from searches
    that predate the pre-decode argmax report, and a cached cell was reused whatever it held."""
    bench = _bench(tmp_path)
    old, old_timing = _cached(bench, tmp_path, "tas", {"projection_steps": 1, "flops_ratio": 0.24})
    new, new_timing = _cached(bench, tmp_path, "tas-latency", {"pre_decode_ratio": 0.23, "decode_moves": 0})
    base, base_timing = _cached(bench, tmp_path, "uniform", {})  # a baseline has no search to report
    assert not bench.is_current(old)
    assert old not in bench.results["cells"] and not old_timing.exists()  # compare.Bench.cell searches again
    assert bench.is_current(new) and new_timing.exists()
    assert bench.is_current(base) and base_timing.exists()
    Path(bench.results["cells"][base]["onnx"]).unlink()
    assert not bench.is_current(base)


def test_run_cells_reruns_stale_cells_in_plan_order_and_report_only_runs_none(tmp_path, monkeypatch):
    """allocation.py runs its cells through compare.Bench.run_cells: its staleness check decides
    what is cached, --report-only (``compute=False``) runs no cell, a TasError is recorded as skipped
    and not retried, and each model's cells run in the plan's order before its latency and after_model."""
    bench = _bench(tmp_path)
    stale, _ = _cached(bench, tmp_path, "tas", {"projection_steps": 1, "flops_ratio": 0.24})
    fresh, _ = _cached(bench, tmp_path, "uniform", {})
    calls = []
    monkeypatch.setattr(bench, "teacher", lambda m: calls.append(("teacher", m)))
    monkeypatch.setattr(bench, "latency", lambda m: calls.append(("latency", m)))

    def cell(m, r, s, meth):
        calls.append((meth, s))
        if meth == "l1":
            raise allocation.TasError("below the reachable minimum")
        return {**_cell(meth, r, s, 70.0), "onnx": str(tmp_path / f"{meth}.onnx"),
                "search_metrics": {"pre_decode_ratio": 0.25, "decode_moves": 0}}

    monkeypatch.setattr(bench, "cell", cell)
    cells = [("m", 0.25, 0, "tas"), ("m", 0.25, 0, "uniform"), ("m", 0.25, 0, "l1"), ("m", 0.25, 1, "tas")]
    done = lambda m: calls.append(("after", m))  # noqa: E731
    bench.run_cells(["m"], cells, 0.0, lambda res: "", skip=(allocation.TasError,), after_model=done, compute=False)
    assert calls == [("teacher", "m"), ("latency", "m"), ("after", "m")]
    assert stale not in bench.results["cells"] and fresh in bench.results["cells"]
    calls.clear()
    bench.run_cells(["m"], cells, 0.0, lambda res: "", skip=(allocation.TasError,), after_model=done)
    assert calls == [("teacher", "m"), ("tas", 0), ("l1", 0), ("tas", 1), ("latency", "m"), ("after", "m")]
    assert bench.results["skipped"] == {"m/r0.25/s0/l1": "below the reachable minimum"}
    assert bench.results["cells"][stale]["top1"] == 70.0 and bench.results["cells"][fresh]["top1"] == 80.0
    calls.clear()
    bench.run_cells(["m"], cells, 0.0, lambda res: "", skip=(allocation.TasError,))
    assert calls == [("teacher", "m"), ("latency", "m")]  # all cached or skipped (the new tas cells' onnx exists)


def test_tas_arch_distils_the_tas_architecture_for_the_whole_budget(tmp_path):
    bench = _bench(tmp_path)
    assert bench.search_epochs("tas") == 1 and bench.search_epochs("tas-arch") == 0
    assert bench.search_epochs("uniform") == 0
    args = allocation.parse_args(["--preset", "cpu", "--seeds", "0", "1", "--ratios", "0.25"])
    cells = allocation.plan(args, {"cifar_resnet20": 0.132})
    order = [(s, meth) for _, _, s, meth in cells]
    for s in (0, 1):  # each tas-arch cell after the tas search it borrows, seed by seed
        assert order.index((s, "tas")) < order.index((s, "tas-arch"))
    assert max(order.index((0, m)) for m in ("tas", "uniform", "l1", "tas-arch")) < order.index((1, "tas"))
    args.methods = ["uniform", "tas-arch"]  # nothing to borrow from
    assert [c[3] for c in allocation.plan(args, {"cifar_resnet20": 0.132})] == ["uniform", "uniform"]
    with pytest.raises(allocation.TasError, match="tas cell"):
        bench.borrow_search("m", 0.25, 0, "tas-arch")
    # tas-init borrows the same way, and distils from the search's own weights
    args.methods = ["tas-init", "uniform", "tas"]
    order = [(s, meth) for _, _, s, meth in allocation.plan(args, {"cifar_resnet20": 0.132})]
    assert all(order.index((s, "tas")) < order.index((s, "tas-init")) for s in (0, 1))
    assert bench.distill_overrides("tas-init") == {"init": "search"} and bench.distill_overrides("tas") == {}
    # tas-depth derives its architecture from the same seed's tas search and is charged that search's epoch
    args.methods = ["tas-depth", "uniform", "tas"]
    order = [(s, meth) for _, _, s, meth in allocation.plan(args, {"cifar_resnet20": 0.132})]
    assert all(order.index((s, "tas")) < order.index((s, "tas-depth")) for s in (0, 1))
    assert bench.search_epochs("tas-depth") == 1
    with pytest.raises(allocation.TasError, match="tas cell"):
        bench.derive_search("m", 0.25, 0, "tas-depth")


def test_stage_flops_split_the_architectures_flops():
    """Each part's share, summed, is the arch's FLOPs ratio as the cost model computed it (the shares
    come from hooks on the slim network); cutting one stage's depth changes that stage's share only."""
    model = tas.create_model("cifar_resnet20", num_classes=10, in_chans=1)
    kw = {"input_size": (1, 16, 16), "model_name": "cifar_resnet20", "model_kwargs": {"num_classes": 10, "in_chans": 1}}
    arch = create_baseline_arch("uniform", model, 0.5, **kw)
    shares = allocation.stage_flops(arch)
    assert set(shares) == {"conv1", "layer1", "layer2", "layer3", "fc"}
    assert sum(shares.values()) == pytest.approx(arch.flops_ratio, rel=1e-9)
    shallow = tas.Arch.from_dict({**arch.to_dict(), "stages": {**arch.stages, "layer2": {"blocks": 3, "depth": 1}}})
    cut = allocation.stage_flops(shallow)
    # layer2's first block carries the stride-2 conv and the downsampling shortcut: not a plain third
    assert 0.2 < cut["layer2"] / shares["layer2"] < 0.5 and cut["layer3"] == pytest.approx(shares["layer3"])


def test_a_stages_computed_groups():
    # cifar_resnet groups: stem (layer1's stream), layer2 (stream), layer2.<block>.conv1 (inner)
    names = ["stem", "layer1.0.conv1", "layer1.2.conv1", "layer2", "layer2.0.conv1", "layer2.1.conv1"]
    assert [n for n in names if allocation._in_stage(n, "layer1", True, 1)] == ["stem", "layer1.0.conv1"]
    assert [n for n in names if allocation._in_stage(n, "layer2", False, 2)] == ["layer2", "layer2.0.conv1",
                                                                                "layer2.1.conv1"]
    assert not allocation._in_stage("stem", "layer2", False, 3)
    # EfficientNet-family names hold a dot in the stage itself (cifar_mobilenetv2: blocks.1, blocks.1.0.mid)
    names = ["stem", "blocks.0", "blocks.1", "blocks.1.0.mid", "blocks.1.1.mid", "blocks.10", "blocks.10.0.mid"]
    assert [n for n in names if allocation._in_stage(n, "blocks.1", False, 1)] == ["blocks.1", "blocks.1.0.mid"]
    assert [n for n in names if allocation._in_stage(n, "blocks.0", True, 1)] == ["stem", "blocks.0"]


def test_teacher_run_lengths_double_up_to_the_cap():
    from types import SimpleNamespace

    def lengths(first, cap):
        bench = SimpleNamespace(args=SimpleNamespace(teacher_epochs=first, teacher_cap=cap))
        return allocation.AllocationBench.teacher_lengths(bench)

    assert lengths(10, 80) == [10, 20, 40, 80]  # the cap itself is a run length
    assert lengths(10, 70) == [10, 20, 40]
    assert lengths(15, 15) == [15]


def test_inherited_accuracy_does_not_depend_on_what_was_measured_before():
    """The BN re-estimation batches are the same for every architecture: the second of two identical
    measurements equals the first (the loader's generator used to carry on from the first pass)."""
    from tas.data import create_loaders

    torch.manual_seed(0)
    teacher = tas.create_model("cifar_resnet20", num_classes=10, in_chans=1)
    kw = {"input_size": (1, 16, 16), "model_name": "cifar_resnet20", "model_kwargs": {"num_classes": 10, "in_chans": 1}}
    arch = create_baseline_arch("uniform", teacher, 0.5, **kw)
    loaders = create_loaders("digits", batch_size=4, img_size=16, augment=False)
    first = allocation.inherited_top1(teacher, arch, loaders, "cpu")
    assert [allocation.inherited_top1(teacher, arch, loaders, "cpu") for _ in range(2)] == [first, first]


@pytest.mark.parametrize("flags, message", [(["--jobs", "0"], "--jobs must be at least 1"),
                                            (["--device", "tpu"], "tpu")])
def test_bad_jobs_or_device_is_one_line_and_exit_2(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        allocation.parse_args(["--quick", *flags])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err


def test_a_stopped_teacher_run_resumes(tmp_path, monkeypatch):
    """A teacher run cut short (a GPU lease ended mid-run) continues from its state; a new run, a
    state without its tensors (a folder brought back without them) or a run of other settings
    starts over."""
    from tas.train import run as train_run

    seen = []
    monkeypatch.setattr(train_run, "train", lambda cfg, **kw: seen.append(cfg))
    bench, run = _bench(tmp_path), tmp_path / "teacher" / "e80"

    def start(b) -> str:
        b.train_teacher_run("cifar_resnet20", 80, run)
        return "resume" if seen[-1].get("resume") else "overwrite" if seen[-1].get("overwrite") else "?"

    assert start(bench) == "overwrite"
    (run / "state").mkdir()
    (run / "state" / "state.json").write_text('{"tensors": "state-1.safetensors", "state": {}}')
    assert start(bench) == "overwrite"  # its tensors are missing
    (run / "state" / "state-1.safetensors").write_bytes(b"x")
    assert start(bench) == "resume"
    assert (seen[-1]["epochs"], seen[-1]["output"]) == (80, str(run))
    other = allocation.AllocationBench(allocation.parse_args(
        ["--preset", "cpu", "--val", "500", "--output", str(tmp_path / "b")]))
    assert start(other) == "overwrite"  # another split of the training images: not the same run
    assert start(other) == "resume" and start(bench) == "overwrite"


@pytest.mark.parametrize("argv, lr, batch_size", [
    ([], 0.02, 256),                                 # full: fine-tuning rate for the GPU-trained teachers
    (["--preset", "cpu"], 0.05, 64),                 # the cpu preset's cached cells keep their settings
    (["--preset", "full", "--lr", "0.1"], 0.1, 256),  # a flag given wins over the preset
])
def test_distillation_lr_and_batch_come_from_the_preset_unless_given(argv, lr, batch_size):
    args = allocation.parse_args([*argv, "--doc", "-", "--output", "unused"])
    assert (args.lr, args.batch_size) == (lr, batch_size)
