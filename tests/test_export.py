"""ONNX export: checker, ORT-vs-torch parity, dynamic batch, atomic writes, and the CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch

import tas  # noqa: F401  (registers cifar_resnet* with timm)
from tas.commands.export import main as export_main
from tas.deploy import export as ex
from tas.deploy import run as export_run_module
from tas.deploy.latency import ort_latency
from tas.cli import run_main
from tas.errors import TasError
from tas.prune.materialize import materialize
from tas.io.rundir import save_run
from tas.nas.supernet import create_supernet

from conftest import perturb_bn

REPO = Path(__file__).resolve().parents[1]
INPUT = (1, 16, 16)
KWARGS = {"num_classes": 10, "in_chans": 1}


def _tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("cifar_resnet20", **KWARGS).eval()


@pytest.fixture(scope="module")
def slim_and_arch():
    model = perturb_bn(_tiny())
    supernet = create_supernet(model, input_size=INPUT)
    widths = {n: g.widths[max(0, len(g.widths) // 2 - 1)] for n, g in supernet.groups().items()}
    depths = {n: d[-2] if len(d) > 1 else d[-1] for n, d in supernet.stage_depths.items()}
    arch = supernet.make_arch(widths, depths)
    assert arch.flops_ratio < 0.6
    return materialize(supernet, arch).eval(), arch


def _ort_batch(path: Path, model: torch.nn.Module, batch: int) -> float:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(batch, *INPUT, generator=torch.Generator().manual_seed(batch))
    (out,) = sess.run(["logits"], {"input": x.numpy()})
    with torch.no_grad():
        ref = model(x).numpy()
    assert out.shape == (batch, 10)
    return float(np.abs(out - ref).max())


def _check_file(path: Path, info: dict) -> None:
    assert info["path"] == str(path) and path.is_file()
    assert info["size_bytes"] == path.stat().st_size
    assert info["opset"] >= 17
    assert info["max_abs_diff"] is not None and info["max_abs_diff"] <= 1e-4
    onnx.checker.check_model(str(path))
    proto = onnx.load(str(path), load_external_data=False)
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in proto.graph.initializer)
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["logits"]
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp files, no external data


@pytest.fixture(scope="module")
def full_export(tmp_path_factory):
    model = perturb_bn(_tiny())
    path = tmp_path_factory.mktemp("full") / "full.onnx"
    return model, path, ex.export_onnx(model, path, INPUT)


def test_export_full_model(full_export):
    model, path, info = full_export
    _check_file(path, info)
    assert info["exporter"] == "dynamo" and "fallback_reason" not in info
    assert _ort_batch(path, model, 5) <= 1e-4  # the batch axis is dynamic
    assert not model.training


def test_export_slim_model(tmp_path, slim_and_arch):
    slim, arch = slim_and_arch
    path = tmp_path / "sub" / "slim.onnx"  # the directory is created
    info = ex.export_onnx(slim, path, INPUT)
    _check_file(path, info)
    assert _ort_batch(path, slim, 5) <= 1e-4
    assert info["size_bytes"] < 4 * arch.full_params * 0.6  # the slim weights, not the full ones


def test_fallback_to_torchscript(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated torch.export failure")

    monkeypatch.setattr(ex, "_export_dynamo", broken)
    model = perturb_bn(_tiny())
    path = tmp_path / "ts.onnx"
    info = ex.export_onnx(model, path, INPUT, opset=17)
    _check_file(path, info)
    assert info["exporter"] == "torchscript" and "simulated" in info["fallback_reason"]
    assert _ort_batch(path, model, 5) <= 1e-4
    with pytest.raises(TasError, match="dynamo ONNX exporter failed"):
        ex.export_onnx(model, tmp_path / "d.onnx", INPUT, exporter="dynamo")


def test_failed_dynamo_attempt_removes_only_its_own_files(tmp_path, monkeypatch):
    """A latency-table build exports many micro-models into one directory: the fallback after a
    failed dynamo attempt must clean up that attempt's partial files and nothing else."""
    def half_written(model, example, path, opset):
        Path(path).write_bytes(b"partial onnx")
        Path(str(path) + ".data").write_bytes(b"partial external data")
        raise RuntimeError("simulated failure after writing")

    monkeypatch.setattr(ex, "_export_dynamo", half_written)
    neighbours = {"1_conv.onnx": b"another micro-model", "notes.txt": b"the user's"}
    for name, data in neighbours.items():
        (tmp_path / name).write_bytes(data)
    path = tmp_path / "2_model.onnx"
    used, reason = ex.export_graph(_tiny(), torch.randn(2, *INPUT), path, 17)
    assert used == "torchscript" and "simulated failure" in reason
    for name, data in neighbours.items():
        assert (tmp_path / name).read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*neighbours, path.name])
    onnx.checker.check_model(str(path))  # the torchscript export, not the partial file


def test_parity_failure_raises_and_writes_nothing(tmp_path, monkeypatch):
    model = perturb_bn(_tiny(0))
    other = perturb_bn(_tiny(1), seed=2)
    real = ex.export_graph
    monkeypatch.setattr(ex, "export_graph", lambda m, *a, **k: real(other, *a, **k))  # exports the wrong network
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous export")
    with pytest.raises(TasError, match="max abs diff"):
        ex.export_onnx(model, path, INPUT, exporter="torchscript")  # the fast exporter: parity is the point
    assert path.read_bytes() == b"previous export"  # not overwritten
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temp leftovers
    with pytest.raises(TasError, match="opset"):
        ex.export_onnx(model, tmp_path / "x.onnx", INPUT, opset=13)
    assert not (tmp_path / "x.onnx").exists()


def test_check_parity_against_other_model(full_export):
    model, path, _ = full_export
    assert ex.check_parity(model, path, INPUT) <= 1e-4
    with pytest.raises(TasError, match="disagree"):
        ex.check_parity(perturb_bn(_tiny(1), seed=2), path, INPUT)
    ms = ort_latency([path, path], INPUT, batch=2, repeats=3, warmup=1, threads=1)
    assert len(ms) == 2 and all(m > 0 for m in ms)


def _save_runs(tmp_path: Path, slim, arch) -> tuple[Path, Path]:
    teacher_dir = tmp_path / "teacher"
    save_run(teacher_dir, perturb_bn(_tiny()), model_name="cifar_resnet20", model_kwargs=KWARGS, input_size=INPUT)
    d = arch.to_dict()
    d["meta"] = {**d["meta"], "teacher": str(teacher_dir)}
    slim_dir = tmp_path / "slim"
    save_run(slim_dir, slim, model_name="cifar_resnet20", model_kwargs=KWARGS, input_size=INPUT,
             extra_config={"arch": d})
    return slim_dir, teacher_dir


def test_cli_exports_and_compares(tmp_path, slim_and_arch, capsys):
    slim_dir, teacher_dir = _save_runs(tmp_path, *slim_and_arch)
    out = tmp_path / "out" / "slim.onnx"
    argv = [str(slim_dir), "--output", str(out), "--batch-sizes", "1", "4", "--repeats", "2", "--warmup", "0",
            "--threads", "1", "--json", str(tmp_path / "summary.json")]
    assert export_main(argv) == 0
    stdout = capsys.readouterr().out
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    assert out.is_file() and summary["onnx"]["path"] == str(out) and summary["onnx"]["max_abs_diff"] <= 1e-4
    assert summary["teacher_source"] == f"run {teacher_dir}"  # found via arch.meta.teacher
    assert set(summary["speedup"]) == {"1", "4"} and all(v > 0 for v in summary["speedup"].values())
    assert summary["flops_ratio"] == pytest.approx(slim_and_arch[1].flops_ratio)
    assert "| teacher" in stdout and "| slim" in stdout and "faster" in stdout


def test_teacher_resolution(tmp_path, slim_and_arch):
    slim, arch = slim_and_arch
    config = {"arch": arch.to_dict(), "model_kwargs": KWARGS}
    config["arch"]["meta"] = {"teacher": str(tmp_path / "gone")}  # recorded but deleted: rebuilt instead
    model, source = export_run_module.resolve_teacher(config, None)
    assert source == "cifar_resnet20 rebuilt (random weights)"
    assert tas.count_flops(model, INPUT) == arch.full_flops
    slim_dir, _ = _save_runs(tmp_path, slim, arch)
    with pytest.raises(TasError, match="pruned network"):
        export_run_module.resolve_teacher(config, slim_dir)


def test_cli_errors_one_line_and_no_output(tmp_path, slim_and_arch, capsys):
    slim_dir, _ = _save_runs(tmp_path, *slim_and_arch)
    (slim_dir / "model.safetensors").unlink()
    out = tmp_path / "out" / "slim.onnx"
    assert run_main(export_main, [str(slim_dir), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "model.safetensors" in err[0]
    assert not out.exists() and not out.parent.exists()

    assert run_main(export_main, [str(tmp_path / "missing"), "--output", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: run directory not found")

    proc = subprocess.run([sys.executable, "-m", "tas.export", str(slim_dir), "--output", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in proc.stderr
    assert sum(line.startswith("error:") for line in lines) == 1
    assert not out.exists()
