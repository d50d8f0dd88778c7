"""``--amp`` and ``--channels-last`` on CPU: a search and a distillation run with them, and the
training steps' convolutions really run in the reduced dtype and in NHWC (a spy on every conv)."""
import json
import math

import pytest
import torch
import torch.nn as nn

from tas.nas.supernet import create_supernet
from tas.prune.load import load_run
from tas.train.amp import Precision

TINY = ["--dataset", "digits", "--limit", "64", "--batch-size", "32", "--epochs", "1", "--no-progress",
        "--device", "cpu"]


@pytest.fixture
def conv_spy(monkeypatch):
    """(output dtype, input is channels_last) of every conv forward of a training step (one that
    records gradients for the weights, and not a jit trace describing the model)."""
    seen = []
    forward = nn.Conv2d.forward

    def spy(self, x):
        y = forward(self, x)
        if torch.is_grad_enabled() and self.weight.requires_grad and not torch.jit.is_tracing():
            # (a one-channel input, the stem's on digits, has no layout to speak of)
            seen.append((y.dtype, x.shape[1] == 1 or x.is_contiguous(memory_format=torch.channels_last)))
        return y

    monkeypatch.setattr(nn.Conv2d, "forward", spy)
    return seen


@pytest.mark.parametrize("amp,dtype", [("bf16", torch.bfloat16),
                                       pytest.param("fp16", torch.float16, marks=pytest.mark.slow)])
def test_search_runs_under_autocast_channels_last(amp, dtype, tmp_path, search_script, teacher_run, conv_spy):
    out = tmp_path / "search"
    assert search_script.main(TINY + ["--teacher", str(teacher_run), "--output", str(out), "--amp", amp,
                                      "--channels-last"]) == 0
    # at least one weight step and one architecture step, 21 convs each
    assert len(conv_spy) >= 42
    assert {d for d, _ in conv_spy} == {dtype}
    assert all(nhwc for _, nhwc in conv_spy)
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "arch.json").is_file() and metrics["flops"] > 0


def test_distillation_runs_under_bf16_autocast_channels_last(tmp_path, train_script, teacher_run, conv_spy):
    teacher, config = load_run(teacher_run)
    s = create_supernet(teacher, input_size=config["input_size"])
    widths = {n: g.widths[len(g.widths) // 2] for n, g in s.groups().items()}
    s.make_arch(widths, {n: d[-1] for n, d in s.stage_depths.items()}).to_json(tmp_path / "arch.json")
    out = tmp_path / "slim"
    assert train_script.main(TINY + ["--arch", str(tmp_path / "arch.json"), "--teacher", str(teacher_run),
                                     "--output", str(out), "--amp", "bf16", "--channels-last"]) == 0
    # the student's training convs (the teacher runs without gradients)
    assert len(conv_spy) >= 21
    assert {d for d, _ in conv_spy} == {torch.bfloat16}
    assert all(nhwc for _, nhwc in conv_spy)
    slim, _ = load_run(out)
    assert all(p.dtype == torch.float32 for p in slim.parameters())  # the weights stay float32
    assert math.isfinite(json.loads((out / "metrics.json").read_text())["top1"])


def test_fp16_loss_scaling_skips_an_overflowing_step():
    """fp16: the loss is scaled before the backward, the step on unscaled gradients; an inf gradient
    skips the step and halves the scale. Off, every call is the plain float32 step."""
    w = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)
    p = Precision("fp16", "cpu")
    scale = p.scaler.get_scale()
    p.backward((w * torch.tensor([1.0, 2.0, 3.0])).sum())
    assert torch.equal(w.grad, scale * torch.tensor([1.0, 2.0, 3.0]))
    p.step(opt)
    p.update()
    assert torch.allclose(w.detach(), torch.tensor([0.9, 0.8, 0.7]))
    opt.zero_grad()
    p.backward((w * torch.tensor([float("inf"), 1.0, 1.0])).sum())
    p.step(opt)
    p.update()
    assert torch.allclose(w.detach(), torch.tensor([0.9, 0.8, 0.7])) and p.scaler.get_scale() == scale / 2
    plain = Precision(None, "cpu")
    opt.zero_grad()
    plain.backward((w * 2).sum())
    assert torch.equal(w.grad, torch.full((3,), 2.0))
    with plain.autocast():
        assert torch.get_autocast_dtype("cpu") and not torch.is_autocast_enabled("cpu")


# the overflowing first step is skipped, so torch sees the schedule step before any optimiser step
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
@pytest.mark.parametrize("stage", ["train", "search"])
def test_fp16_loss_scale_survives_a_resume(stage, tmp_path, train_script, search_script, teacher_run, monkeypatch):
    """The fp16 loss scale is part of the resumable state (training and search): a run whose first
    step overflowed (scale halved from 2^16) resumes at the halved scale, not at a fresh one."""
    scales, overflow = [], [True]
    backward = Precision.backward

    def spy(self, loss, inputs=None):
        scales.append(self.scaler.get_scale())
        if overflow[0]:  # the first backward overflows: that step is skipped and the scale halves
            overflow[0] = False
            loss = loss * float("inf")
        return backward(self, loss, inputs)

    monkeypatch.setattr(Precision, "backward", spy)
    out = tmp_path / "run"
    script, flags = ((train_script, ["--model", "cifar_resnet20", "--img-size", "16"]) if stage == "train" else
                     (search_script, ["--teacher", str(teacher_run)]))
    flags += ["--amp", "fp16", "--output", str(out)]
    assert script.main(TINY + flags) == 0
    assert scales[0] == 2.0 ** 16 and scales[-1] == 2.0 ** 15  # halved once, grown no more
    scales.clear()
    assert script.main(TINY[:-3] + ["--epochs", "2", "--device", "cpu", "--resume"] + flags) == 0
    assert scales[0] == 2.0 ** 15
