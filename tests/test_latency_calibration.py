"""Latency tables calibrated against whole networks, the noise they record and re-measure, and the
CUDA-event timer (fake timers and fake events: every expected figure is computed here by hand)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import timm
import torch

import tas  # noqa: F401  (registers cifar_resnet* with timm)
from conftest import FakeTimer
from tas.deploy import latency as lat
from tas.prune.materialize import materialize
from tas.nas.supernet import create_supernet

INPUT = (1, 8, 8)
SMALL_SPACE = {"ratios": [0.5, 1.0], "divisor": 8, "depth": "cifar"}


@pytest.fixture(scope="module")
def supernet():
    torch.manual_seed(0)
    model = timm.create_model("cifar_resnet20", num_classes=10, in_chans=1).eval()
    return create_supernet(model, SMALL_SPACE, input_size=INPUT, model_name="cifar_resnet20")


def _layers(model: torch.nn.Module) -> tuple[float, float]:
    """``(Σ FakeTimer seconds, Σ weight MB)`` over a network's convs and linears, read off the modules."""
    secs = mb = 0.0
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            secs += FakeTimer.A * m.in_channels * m.out_channels + FakeTimer.B
            mb += m.weight.numel() * 4 / 2**20
        elif isinstance(m, torch.nn.Linear):
            secs += FakeTimer.A * m.in_features * m.out_features + FakeTimer.B
            mb += m.weight.numel() * 4 / 2**20
    return secs, mb


class BlendTimer(FakeTimer):
    """FakeTimer whose whole networks take ``overhead + scale × Σ layers + per_mb × MB`` (ms), with
    one blend when the call comes right after another model's (cold) and another right after the
    same model's (steady: the calibration's untimed call before each timed one)."""

    COLD = {"scale": 1.3, "per_mb": 2.0, "overhead": 0.4}
    STEADY = {"scale": 0.9, "per_mb": -0.5, "overhead": 0.1}

    def __init__(self) -> None:
        super().__init__()
        self.last = None

    def __call__(self, runnable, x) -> float:
        steady, self.last = runnable is self.last, runnable
        if runnable.spec.kind != "model":
            return super().__call__(runnable, x)
        secs, mb = _layers(runnable.model)
        f = self.STEADY if steady else self.COLD
        return (f["overhead"] + f["scale"] * secs * 1e3 + f["per_mb"] * mb) / 1e3


def test_fit_timing_recovers_known_terms_and_matches_the_normal_equations():
    rng = np.random.default_rng(0)
    layers, mb = rng.uniform(1, 10, 12), rng.uniform(0.1, 3, 12)
    grids, mbs = [np.array([1.0, 2.0])], [np.array([0.1, 0.2])]
    exact = 0.3 + 0.8 * layers + 0.25 * mb
    fit = lat.fit_timing(layers, mb, exact, grids, mbs)
    assert fit["terms"] == ["layers", "mb", "overhead"]
    assert (fit["scale"], fit["per_mb"], fit["overhead"]) == pytest.approx((0.8, 0.25, 0.3), rel=1e-9)
    assert max(map(abs, fit["residuals"])) < 1e-9
    # with noise: the least-squares solution, here from the normal equations X'X c = X'y
    noisy = exact * rng.uniform(0.97, 1.03, 12)
    x = np.stack([layers, mb, np.ones(12)], axis=1)
    want = np.linalg.solve(x.T @ x, x.T @ noisy)
    fit = lat.fit_timing(layers, mb, noisy, grids, mbs)
    assert (fit["scale"], fit["per_mb"], fit["overhead"]) == pytest.approx(tuple(want), rel=1e-9)
    assert fit["residuals"] == pytest.approx(list((x @ want) / noisy - 1), abs=1e-12)


def test_fit_timing_keeps_the_closest_physical_fit_or_none():
    layers = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    mb = np.array([0.1, 0.5, 0.9, 3.0, 8.0])
    grids, mbs = [np.array([1.0, 16.0])], [np.array([0.1, 8.0])]
    # a negative intercept (y = 2 × layers − 1) is not physical: a fit without one is kept
    fit = lat.fit_timing(layers, np.zeros(5), 2 * layers - 1, grids, [np.zeros(2)])
    assert fit is not None and fit["overhead"] == 0 and "overhead" not in fit["terms"]
    # the exact fit of y = 3 + 0.2 × layers − 0.5 × MB makes the widest grid point negative
    # (0.2 × 16 − 0.5 × 8 < 0): it is refused for the closest fit whose grids stay >= 0
    steep = 3.0 + 0.2 * layers - 0.5 * mb
    fit = lat.fit_timing(layers, mb, steep, grids, mbs)
    assert fit is None or (fit["terms"] != ["layers", "mb", "overhead"]
                           and all((fit["scale"] * g + fit["per_mb"] * m).min() >= 0 for g, m in zip(grids, mbs)))
    # whole networks that follow their weights, not their layers (a shared memory bus): the
    # weights' term is chosen over the layers' (y = 40 + 200 × MB, layers shuffled against MB)
    shuffled = np.array([8.0, 1.0, 16.0, 2.0, 4.0])
    fit = lat.fit_timing(shuffled, mb, 40 + 200 * mb, grids, mbs)
    assert fit["per_mb"] == pytest.approx(200, rel=1e-6) and fit["overhead"] == pytest.approx(40, rel=1e-6)
    assert fit["scale"] == pytest.approx(0, abs=1e-6)
    # every network equally fast: nothing ranks them, no fit
    assert lat.fit_timing(layers, mb, np.full(5, 3.0), grids, mbs) is None


def test_calibration_recovers_the_blend_of_whole_network_times(supernet):
    """The build times random networks whole; a timer whose whole networks follow a known blend of
    their layers' times and weights (another one in the steady state) is recovered exactly, and
    the table predicts any other network of the space as that blend."""
    table = lat.build_latency_table(supernet, runtime="torch-cpu", timer=BlendTimer(), repeats=3, warmup=0,
                                    progress=False, save=False, hardware="test", calibrate=5)
    cal = table.calibration
    assert len(cal["samples"]) == 7 and cal["samples"][0]["method"] == "full"
    for timing, want in (("cold", BlendTimer.COLD), ("steady", BlendTimer.STEADY)):
        got = cal[timing]
        assert (got["scale"], got["per_mb"], got["overhead"]) == pytest.approx(
            (want["scale"], want["per_mb"], want["overhead"]), rel=1e-6, abs=1e-9), timing
        assert max(map(abs, got["residuals"])) < 1e-6
    # an architecture the calibration did not time, predicted in both timings and by the budget
    arch = supernet.make_arch({n: g.widths[i % len(g.widths)] for i, (n, g) in enumerate(supernet.groups().items())},
                              {n: d[1] for n, d in supernet.stage_depths.items()})
    secs, mb = _layers(materialize(supernet.template, arch))
    full_secs, full_mb = _layers(supernet.template)

    def blend(f, s, m):
        return f["overhead"] + f["scale"] * s * 1e3 + f["per_mb"] * m

    cold, steady = blend(BlendTimer.COLD, secs, mb), blend(BlendTimer.STEADY, secs, mb)
    cold_full, steady_full = blend(BlendTimer.COLD, full_secs, full_mb), blend(BlendTimer.STEADY, full_secs, full_mb)
    assert table.predict_arch(arch, "cold") == pytest.approx(cold, rel=1e-6)
    assert table.predict_arch(arch, "steady") == pytest.approx(steady, rel=1e-6)
    # the budget: the cold full latency, and the ratio halfway between the two timings' ratios
    assert table.full() == pytest.approx(cold_full, rel=1e-6)
    assert table.exact_arch(arch) / table.full() == pytest.approx((cold / cold_full + steady / steady_full) / 2, rel=1e-6)
    # ... differentiably: expected() at this one-hot architecture agrees
    with torch.no_grad():
        for n, g in supernet.groups().items():
            if g.alpha is not None:
                g.alpha.fill_(-1e4)
                g.alpha[g.widths.index(arch.groups[n]["width"])] = 1e4
        for n in supernet.graph.stages:
            key = n.replace(".", "__")
            if key in supernet.betas:
                supernet.betas[key].fill_(-1e4)
                supernet.betas[key][supernet.stage_depths[n].index(arch.stages[n]["depth"])] = 1e4
    assert table.expected(supernet).item() == pytest.approx(table.exact_arch(arch), rel=1e-5)
    # saved and loaded: the same predictions
    again = lat.LatencyTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert again.exact_arch(arch) == pytest.approx(table.exact_arch(arch), rel=1e-12)
    assert "calibration, steady" in table.summary()


def test_an_old_format_table_is_measured_again(supernet, tmp_path, capsys):
    kw = dict(runtime="torch-cpu", repeats=1, warmup=0, progress=False, hardware="test", cache_dir=tmp_path, calibrate=0)
    first = lat.load_or_build(supernet, timer=FakeTimer(), **kw)
    old = json.loads(first.path.read_text())
    old["format"] = 2
    first.path.write_text(json.dumps(old))
    timer = FakeTimer()
    lat.load_or_build(supernet, timer=timer, **kw)
    assert timer.calls > 0 and "ignoring the cached latency table" in capsys.readouterr().err


class NoisyTimer(FakeTimer):
    """FakeTimer times a factor that cycles per micro-model through ``factors`` (its repeats spread)."""

    def __init__(self, factors) -> None:
        super().__init__()
        self.factors, self.seen = factors, {}

    def __call__(self, runnable, x) -> float:
        n = self.seen[id(runnable)] = self.seen.get(id(runnable), -1) + 1
        return super().__call__(runnable, x) * self.factors[n % len(self.factors)]


@pytest.mark.parametrize("factors, noisy", [((0.5, 1.0, 2.0, 1.0), True), ((0.99, 1.0, 1.01, 1.0), False)])
def test_noisy_entries_are_measured_again_and_warned_about(supernet, factors, noisy, capsys):
    quiet = FakeTimer()
    lat.build_latency_table(supernet, runtime="torch-cpu", timer=quiet, repeats=4, warmup=0, progress=False,
                            save=False, hardware="test", calibrate=0)
    timer = NoisyTimer(factors)
    table = lat.build_latency_table(supernet, runtime="torch-cpu", timer=timer, repeats=4, warmup=0, progress=False,
                                    save=False, hardware="test", calibrate=0)
    err = capsys.readouterr().err
    noise = table.meta["noise"]
    entries = sum(len(e.points()) for e in table.layers)
    # IQR / median of 4 repeats of (0.5, 1, 2, 1) × t, inclusive quartiles: (1.25 - 0.875) / 1;
    # of (0.99, 1, 1.01, 1) × t: (1.0025 - 0.9975) / 1
    assert max(float(np.max(e.spread)) for e in table.layers) == pytest.approx(0.375 if noisy else 0.005, rel=1e-6)
    assert noise["entries"] == entries and noise["limit"] == lat.NOISE_LIMIT
    assert isinstance(noise["load_before"], float) and isinstance(noise["load_after"], float)
    if noisy:
        # every entry again, with its empty model: 4 more calls each (no warm-up)
        assert noise["remeasured"] == entries and noise["noisy"] == entries
        assert timer.calls == quiet.calls + (entries + 1) * 4
        assert "warning: the latency table is too noisy to trust" in err and f"{entries} of {entries}" in err
    else:
        assert noise["remeasured"] == 0 and noise["noisy"] == 0 and timer.calls == quiet.calls
        assert "warning" not in err


def test_a_noisy_cached_table_is_measured_again_on_load(supernet, tmp_path, capsys):
    """The search loads tables through load_or_build: a cached table left noisy (a busy machine)
    has its noisy entries measured again, and stops warning once they are quiet."""
    kw = dict(runtime="torch-cpu", repeats=4, warmup=0, progress=False, hardware="test", cache_dir=tmp_path, calibrate=0)
    built = lat.load_or_build(supernet, timer=NoisyTimer((0.5, 1.0, 2.0, 1.0)), remeasure=0, **kw)
    entries = built.meta["noise"]["entries"]
    assert built.meta["noise"]["noisy"] == entries and "too noisy" in capsys.readouterr().err
    quiet = FakeTimer()
    table = lat.load_or_build(supernet, timer=quiet, **kw)
    err = capsys.readouterr().err
    assert table.source == "cache" and quiet.calls == (entries + 1) * 4
    assert f"{entries} entries of the cached latency table" in err and "warning" not in err
    assert table.meta["noise"]["noisy"] == 0
    assert lat.LatencyTable.load(table.path).meta["noise"]["noisy"] == 0  # saved back
    quiet = FakeTimer()
    lat.load_or_build(supernet, timer=quiet, **kw)
    assert quiet.calls == 0


class FakeEvent:
    """A CUDA event on a fake GPU clock (ms) that the timed call advances."""

    clock = 0.0
    log: list = []

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing
        self.at = None

    def record(self) -> None:
        self.at = FakeEvent.clock
        FakeEvent.log.append("record")

    def synchronize(self) -> None:
        FakeEvent.log.append("sync")

    def elapsed_time(self, end: "FakeEvent") -> float:
        return end.at - self.at


def test_cuda_event_timer_reads_gpu_time_in_seconds():
    def run(x):
        FakeEvent.log.append("run")
        FakeEvent.clock += 2.5  # ms of kernels

    FakeEvent.clock, FakeEvent.log = 100.0, []
    timer = lat.cuda_event_timer(FakeEvent)
    runnable = lat.Runnable(lat.MicroSpec("null"), None, run)
    assert timer(runnable, None) == pytest.approx(2.5e-3)
    assert FakeEvent.log == ["record", "run", "record", "sync"]
    # through measure(): the median of the event times, in seconds
    steps = iter([1.0, 3.0, 2.0, 9.0, 2.0])

    def uneven(x):
        FakeEvent.clock += next(steps)

    med = lat.measure([lat.Runnable(lat.MicroSpec("null"), None, uneven)], [None], repeats=5, warmup=0, timer=timer)
    assert med == [pytest.approx(2.0e-3)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_search_refuses_torch_cuda_without_a_gpu(tmp_path, teacher_run, search_script, capsys):
    from tas.cli import run_main

    out = tmp_path / "s"
    rc = run_main(search_script.main, ["--teacher", str(teacher_run), "--latency-ratio", "0.6", "--runtime", "torch-cuda",
                                       "--dataset", "digits", "--limit", "64", "--epochs", "1", "--device", "cpu",
                                       "--no-progress", "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and "torch-cuda needs a CUDA GPU" in err and err.count("\n") == 1
    assert not (out / "arch.json").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_cuda_table_on_a_gpu(supernet):
    """On a GPU: a torch-cuda table is timed with CUDA events and calibrated."""
    table = lat.build_latency_table(supernet, runtime="torch-cuda", repeats=5, warmup=2, progress=False, save=False,
                                    calibrate=3)
    assert table.meta["timer"] == "cuda_event" and table.whole_ms > 0
    assert all(np.isfinite(e.times).all() for e in table.layers)
    assert "gpu=" in table.key["hardware"] and os.environ is not None
