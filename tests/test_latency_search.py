"""search.py with a latency table: ``divisor: auto`` and ``--latency-ratio``'s prediction check
(fake timers and a fake end-to-end measurement, so the expected figures are computed by hand)."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import FakeTimer
from tas.deploy import latency as lat
from tas.deploy.latency import check as latency_check
from tas.prune.load import load_run


def test_divisor_auto_searches_only_aligned_widths(tmp_path, teacher_run, search_script, monkeypatch):
    """``divisor: auto``: the search measures the table, drops widths no faster than a wider one and
    records the kept candidates in the space of ``arch.json``."""
    from tas.nas.space import load_space

    space = tmp_path / "auto.yaml"
    space.write_text("family: resnet\nratios: [0.25, 0.5, 0.75, 1.0]\ndivisor: auto\nk: 2\ndepth: cifar\n")
    assert load_space(str(space)).step == 8
    penalised = ("layer2.0.downsample.0", "layer2.0.conv2", "layer2.1.conv2", "layer2.2.conv2")
    built = []

    def fake_table(supernet, **kwargs):
        built.append([*supernet.groups()["layer2"].widths])
        return lat.build_latency_table(supernet, runtime="torch-cpu", repeats=1, warmup=0, progress=False,
                                       save=False, hardware="test",
                                       timer=FakeTimer(penalty={(n, 16): 1e-3 for n in penalised}))

    monkeypatch.setattr(lat, "load_or_build", fake_table)
    out = tmp_path / "s"
    assert search_script.main(["--teacher", str(teacher_run), "--space", str(space), "--flops-ratio", "0.6",
                               "--dataset", "digits", "--limit", "64", "--batch-size", "32", "--epochs", "1",
                               "--device", "cpu", "--no-progress", "--output", str(out)]) == 0
    assert built == [[8, 16, 24, 32]]  # the table covers the 8-step grid
    arch = json.loads((out / "arch.json").read_text())
    widths = arch["meta"]["space"]["widths"]
    assert widths["layer2"] == [8, 24, 32]  # 16 was slower than 24
    assert arch["groups"]["layer2"]["width"] in (8, 24, 32)
    assert widths["layer3"] == [16, 32, 48, 64]  # monotone groups keep every candidate


def test_latency_search_reports_prediction_against_measurement(tmp_path, teacher_run, search_script, monkeypatch):
    """--latency-ratio: metrics.json holds predicted and measured latency, and both error figures."""
    # no fixed overhead: the layers (scaled to the whole model's 1 µs) make the latency
    whole = 1e-6
    monkeypatch.setattr(lat, "load_or_build", lambda supernet, **kw: lat.build_latency_table(
        supernet, runtime="torch-cpu", repeats=1, warmup=0, progress=False, save=False, hardware="test",
        timer=FakeTimer(whole=whole)))
    measured = []

    def fake_measure(paths, input_size, batch=1, threads=2, warm_calls=0, **kw):
        measured.append((len(paths), batch, warm_calls))
        return [4.0, 2.0] if warm_calls == 0 else [3.0, 1.2]  # original / slim ms, cold and steady state

    monkeypatch.setattr(latency_check, "measure_onnx", fake_measure)  # what check_prediction calls
    out = tmp_path / "s"
    assert search_script.main(["--teacher", str(teacher_run), "--latency-ratio", "0.6", "--latency-batch", "2",
                               "--latency-feedback", "0", "--dataset", "digits", "--limit", "64", "--batch-size", "32", "--epochs", "1",
                               "--device", "cpu", "--no-progress", "--output", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert measured == [(2, 2, 0), (2, 2, 1)] * 3  # like the table (cold), then the steady state, 3 processes each
    # The prediction by hand: FakeTimer charges A·c_in·c_out + B per conv/linear layer, and the
    # table scales its layers so that the full network's sum is the whole model's ``whole`` s.
    slim, teacher = load_run(out)[0], load_run(teacher_run)[0]
    ratio = _fake_layer_seconds(slim) / _fake_layer_seconds(teacher)
    predicted_ms, full_ms = whole * 1e3 * ratio, whole * 1e3
    assert 0.6 * (1 - 0.1) - 1e-9 <= ratio <= 0.6 + 1e-9  # the budget band, in this independent latency
    expected = {
        "target_metric": "latency", "measured_latency_ms": 2.0, "full_latency_ms": 4.0,
        "measured_latency_ratio": 0.5, "steady_latency_ms": 1.2, "steady_full_latency_ms": 3.0,
        "steady_latency_ratio": 1.2 / 3.0,
        "predicted_latency_ms": predicted_ms, "predicted_full_latency_ms": full_ms,
        "predicted_latency_ratio": ratio,
        "prediction_error": predicted_ms / 2.0 - 1, "full_prediction_error": full_ms / 4.0 - 1,
        "ratio_prediction_error": ratio / 0.5 - 1,
    }
    assert {k: m[k] for k in expected} == pytest.approx(expected, rel=1e-6)
    assert "steady_prediction_error" not in m


def _fake_layer_seconds(model: torch.nn.Module) -> float:
    """Σ over the network's convs and linears of FakeTimer's A·c_in·c_out + B (the slim network has
    only the blocks the architecture keeps)."""
    total = 0.0
    for layer in model.modules():
        if isinstance(layer, torch.nn.Conv2d):
            total += FakeTimer.A * layer.in_channels * layer.out_channels + FakeTimer.B
        elif isinstance(layer, torch.nn.Linear):
            total += FakeTimer.A * layer.in_features * layer.out_features + FakeTimer.B
    return total
