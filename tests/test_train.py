"""train.py / tas.train.loop end to end: the run contract, resume, --config, errors, no overwrite."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tas.train import engine, run as train_run
from tas.cli import parse_args, run_main
from tas.errors import CheckpointError, TasError
from tas.prune.load import load_run

from conftest import REPO

METRIC_KEYS = {"top1", "top5", "loss", "params", "flops", "wall_time_s", "epochs", "per_class_recall"}


def _args(train_script, argv):
    return parse_args(train_script.build_parser(), argv)


def _one_line_error(capsys, train_script, argv, *needles, code=2):
    rc = run_main(train_script.main, argv)
    err = capsys.readouterr().err
    assert rc == code, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_run_writes_the_contract(teacher_run):
    for name in ("model.safetensors", "config.json", "metrics.json", "state/state.json"):
        assert (teacher_run / name).is_file(), name
    config = json.loads((teacher_run / "config.json").read_text())
    assert config["version"] == 1 and config["model"] == "cifar_resnet20"
    assert config["model_kwargs"] == {"num_classes": 10, "in_chans": 1}
    assert config["input_size"] == [1, 16, 16] and config["dataset"] == "digits"
    metrics = json.loads((teacher_run / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    assert metrics["epochs"] == 1 and metrics["params"] == 272_186 and len(metrics["per_class_recall"]) == 10
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 100 and metrics["flops"] > 0

    events = EventAccumulator(str(teacher_run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/top1", "val/top5", "val/loss"} <= tags
    assert events.Scalars("val/top1")[-1].value == pytest.approx(metrics["top1"], abs=1e-4)

    # load_run rebuilds the same network: evaluating it reproduces the recorded accuracy
    from tas.data import create_loaders

    model, cfg = load_run(teacher_run)
    loaders = create_loaders("digits", img_size=16, limit=256)
    result = engine.evaluate(model, loaders["test"], "cpu", per_class=True)
    assert result["top1"] == pytest.approx(metrics["top1"])
    assert result["per_class_recall"] == pytest.approx(metrics["per_class_recall"])


def test_engine_accuracy_caps_topk():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])
    assert engine.accuracy(logits, torch.tensor([1, 2])) == [50.0, 100.0]


def _weights(run):
    return load_file(str(run / "model.safetensors"))


def _assert_same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_resume_is_bit_identical(tmp_path, train_script, tiny_flags, monkeypatch):
    flags = tiny_flags + ["--limit", "128", "--epochs", "2"]
    straight = tmp_path / "straight"
    train_run.train(_args(train_script, flags + ["--output", str(straight)]))

    # The same run killed after its first epoch, then resumed.
    killed = tmp_path / "killed"
    real = engine.train_one_epoch

    def dies_in_epoch_2(*a, **kw):
        if kw["epoch"] == 1:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(engine, "train_one_epoch", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_run.train(_args(train_script, flags + ["--output", str(killed)]))
    monkeypatch.setattr(engine, "train_one_epoch", real)
    assert not (killed / "model.safetensors").exists()
    # an unfinished run is neither silently restarted ...
    with pytest.raises(TasError, match="unfinished run"):
        train_run.train(_args(train_script, flags + ["--output", str(killed)]))
    # ... nor resumed with other settings
    with pytest.raises(CheckpointError, match="--batch-size"):
        train_run.train(_args(train_script, flags + ["--output", str(killed), "--resume", "--batch-size", "16"]))
    metrics = train_run.train(_args(train_script, flags + ["--output", str(killed), "--resume"]))
    assert metrics["epochs"] == 2
    _assert_same_weights(straight, killed)

    # Extending a finished run: 1 epoch, then --resume to 2 (a schedule independent of --epochs).
    const = ["--sched", "none"]
    two = tmp_path / "two"
    train_run.train(_args(train_script, flags + const + ["--output", str(two)]))
    one = tmp_path / "one"
    train_run.train(_args(train_script, flags + const + ["--output", str(one), "--epochs", "1"]))
    train_run.train(_args(train_script, flags + const + ["--output", str(one), "--resume"]))
    _assert_same_weights(two, one)


def test_config_yaml_sets_flags_and_cli_overrides(tmp_path, train_script):
    cfg = tmp_path / "teacher.yaml"
    cfg.write_text("epochs: 1\nlr: 0.05\nbatch-size: 16\nimg_size: 16\nlimit: 64\nno_progress: true\n"
                   f"output: {tmp_path / 'from_yaml'}\n")
    args = _args(train_script, ["--config", str(cfg)])
    assert (args.epochs, args.lr, args.batch_size, args.img_size, args.no_progress) == (1, 0.05, 16, 16, True)
    args = _args(train_script, ["--config", str(cfg), "--lr", "0.2", "--output", str(tmp_path / "cli")])
    assert args.lr == 0.2 and args.batch_size == 16
    assert train_script.main(["--config", str(cfg), "--lr", "0.2", "--output", str(tmp_path / "cli")]) == 0
    settings = json.loads((tmp_path / "cli" / "config.json").read_text())["train"]
    assert (settings["lr"], settings["batch_size"], settings["epochs"]) == (0.2, 16, 1)


@pytest.mark.parametrize("argv,needles", [
    (["--model", "cifar_resnet21"], ["unknown model", "cifar_resnet20"]),
    (["--dataset", "imagenette"], ["unknown dataset", "digits"]),
    (["--dataset", "fashion-mnist", "--data-dir", "/nonexistent"], ["fashion-mnist", "/nonexistent"]),
    (["--resume"], ["--resume", "no resumable state"]),
    (["--epochs", "0"], ["--epochs"]),
    (["--opt", "sgdd"], ["--opt"]),
])
def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys, train_script, tiny_flags, argv, needles):
    out = tmp_path / "out"
    out.mkdir()
    _one_line_error(capsys, train_script, tiny_flags + ["--output", str(out)] + argv, *needles)


def test_bad_config_and_truncated_pretrained_path(tmp_path, capsys, train_script, tiny_flags, teacher_run):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("epochs: 1\nlearning_rate: 0.1\n")
    _one_line_error(capsys, train_script, ["--config", str(cfg)], "unknown keys", "learning_rate")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes((teacher_run / "model.safetensors").read_bytes()[:2000])
    _one_line_error(capsys, train_script, tiny_flags + ["--output", str(tmp_path / "o"), "--pretrained-path",
                                                        str(broken)], "broken.safetensors")


def test_good_run_is_not_overwritten(tmp_path, capsys, train_script, tiny_flags, teacher_run):
    run = tmp_path / "run"
    shutil.copytree(teacher_run, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    base = tiny_flags + ["--output", str(run)]
    _one_line_error(capsys, train_script, base, "already holds a finished run", "--overwrite")
    # failing runs asked to overwrite: before training starts, and mid-training (diverging)
    _one_line_error(capsys, train_script, base + ["--overwrite", "--model", "nope_net"], "unknown model")
    _one_line_error(capsys, train_script, base + ["--overwrite", "--lr", "1e30", "--warmup-epochs", "0"],
                    "diverged", "epoch 1", code=3)  # exit code 3: a diverged run
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert {k: after[k] for k in before} == before
    load_run(run)


def test_cli_subprocess(tmp_path, train_script, capsys):
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train.py"), "--img-size", "16", "--limit", "64", "--epochs", "1",
           "--output", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # see conftest: robust on a busy machine
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"tensorboard --logdir {out}" in proc.stdout and "model.safetensors" in proc.stdout
    assert (out / "model.safetensors").is_file()

    # the error path behind the same CLI wrapper, in this process (one torch import less)
    capsys.readouterr()
    assert run_main(train_script.main, cmd[2:] + ["--model", "cifar_resnt20", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model") and err.count("\n") == 1
