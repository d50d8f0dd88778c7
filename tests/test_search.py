"""search.py end to end on a tiny teacher: budget met, run directory, TensorBoard tags, bad input."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import tas
from tas.arch import Arch
from tas.flops import count_flops

REPO = Path(__file__).resolve().parents[1]
FLAGS = ["--dataset", "digits", "--limit", "256", "--batch-size", "32", "--epochs", "2", "--log-every", "2",
         "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def search_run(tmp_path_factory, search_script, teacher_run):
    out = tmp_path_factory.mktemp("search") / "run"
    assert search_script.main(FLAGS + ["--teacher", str(teacher_run), "--flops-ratio", "0.5",
                                       "--output", str(out)]) == 0
    return out


def test_search_meets_budget_and_writes_run(search_run):
    arch = Arch.from_json(search_run / "arch.json")
    assert 0.45 <= arch.flops_ratio <= 0.5
    metrics = json.loads((search_run / "metrics.json").read_text())
    assert metrics["within_tolerance"] is True and metrics["flops"] == arch.flops
    history = json.loads((search_run / "arch_history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert (search_run / "supernet.safetensors").is_file()
    slim = tas.load_slim(search_run)
    assert count_flops(slim, arch.input_size) == arch.flops
    assert slim(torch.randn(2, *arch.input_size)).shape == (2, 10)


def test_search_tensorboard_tags(search_run):
    acc = EventAccumulator(str(search_run), size_guidance={"images": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("search/weight_loss", "search/arch_loss", "search/cost_loss", "search/expected_ratio",
                "search/derived_flops_ratio", "search/target_ratio", "search/tau", "search/val_top1"):
        assert tag in tags["scalars"], tag
    assert "width_probs" in tags["images"] and "depth_probs" in tags["images"]
    assert "width/layer3" in tags["histograms"] and "depth/layer1" in tags["histograms"]
    assert any(t.startswith("arch") for t in tags["tensors"])


def test_search_resume_continues(tmp_path, search_script, teacher_run):
    out = tmp_path / "s"
    base = FLAGS + ["--teacher", str(teacher_run), "--output", str(out)]
    assert search_script.main([*base[:base.index("--epochs")], "--epochs", "1",
                               *base[base.index("--epochs") + 2:]]) == 0
    assert search_script.main(base + ["--resume"]) == 0
    history = json.loads((out / "arch_history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]


def _run(args, cwd=REPO):
    return subprocess.run([sys.executable, "search.py", *args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.parametrize("extra,message", [
    (["--flops-ratio", "0.001"], "unreachable: the smallest architecture"),
    (["--space", "__SPACE__"], "unknown keys"),
    (["--model", "resnet18"], "does not match the teacher"),
    (["--latency-ratio", "0.01"], "latency target 0.010 is unreachable"),
])
def test_search_bad_input(tmp_path, teacher_run, extra, message):
    space = tmp_path / "space.yaml"
    space.write_text("family: resnet\nratios: [0.5, 1.0]\nshape: round\n")
    extra = [str(space) if e == "__SPACE__" else e for e in extra]
    r = _run(FLAGS + ["--teacher", str(teacher_run), "--output", str(tmp_path / "o"), *extra])
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o" / "arch.json").exists()


def test_search_refuses_teacher_whose_weights_do_not_fit(tmp_path, teacher_run):
    bad = tmp_path / "teacher"
    bad.mkdir()
    cfg = json.loads((teacher_run / "config.json").read_text())
    cfg["model"] = "cifar_resnet32"
    (bad / "config.json").write_text(json.dumps(cfg))
    (bad / "model.safetensors").write_bytes((teacher_run / "model.safetensors").read_bytes())
    r = _run(FLAGS + ["--teacher", str(bad), "--output", str(tmp_path / "o")])
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr


def test_search_refuses_unsupported_model(tmp_path):
    from tas.rundir import save_run
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, in_chans=1, num_classes=10)
    save_run(tmp_path / "vit", vit, model_name="vit_tiny_patch16_224",
             model_kwargs={"num_classes": 10, "in_chans": 1, "img_size": 16, "patch_size": 8}, input_size=(1, 16, 16))
    r = _run(FLAGS + ["--teacher", str(tmp_path / "vit"), "--output", str(tmp_path / "o")])
    assert r.returncode == 2 and "supported families are" in r.stderr


def test_budget_decode_gives_up_the_least_probable_width_first():
    """An argmax over budget moves into the band by shrinking what the logits care least about."""
    import timm

    from tas.searching import ArchStepper
    from tas.supernet import create_supernet

    torch.manual_seed(0)
    s = create_supernet(timm.create_model("cifar_resnet20", num_classes=10), input_size=(3, 32, 32))
    with torch.no_grad():
        for n, g in s.groups().items():
            if g.alpha is not None:
                g.alpha.zero_()
                g.alpha[-1] = 0.0 if n == "layer3" else 5.0  # layer3 indifferent, the rest want full width
        for b in s.betas.values():
            b.zero_()
            b[-1] = 5.0
    stepper = ArchStepper(s, "flops", 0.6, 0.05, 2.0, 0.05, 0.0)
    assert not stepper.within()  # the argmax is the full network
    widths, depths, moves = stepper.decode()
    assert moves > 0 and stepper.within(widths, depths)
    cands = s.groups()["layer3"].widths
    assert widths["layer3"] == cands[0] or all(widths[n] == g.channels for n, g in s.groups().items() if n != "layer3")
    assert widths["layer3"] < s.groups()["layer3"].channels
    # nothing the logits prefer still fits: every wider candidate of a shrunk group breaks the budget
    for n, g in s.groups().items():
        i = g.widths.index(widths[n])
        if i + 1 < len(g.widths) and n != "layer3":
            assert stepper._cost_of({**widths, n: g.widths[i + 1]}, depths) > stepper.target
    # already within: nothing moves
    with torch.no_grad():
        for n, g in s.groups().items():
            if g.alpha is not None:
                g.alpha.zero_()
                g.alpha[g.widths.index(widths[n])] = 10.0
        for n, b in s.betas.items():
            b.zero_()
            b[s.stage_depths[n.replace("__", ".")].index(depths[n.replace("__", ".")])] = 10.0
    assert stepper.decode() == (widths, depths, 0)


def test_fill_decode_spends_the_budget_up_to_the_target():
    """fill: an argmax inside the band still grows until no single step up fits under the target."""
    import timm

    from tas.searching import ArchStepper, SearchConfig
    from tas.supernet import create_supernet

    torch.manual_seed(0)
    s = create_supernet(timm.create_model("cifar_resnet20", num_classes=10), input_size=(3, 32, 32))
    band = ArchStepper(s, "flops", 0.6, 0.2, 2.0, 0.05, 0.0)
    with torch.no_grad():  # put the argmax at a uniform width that lands in the wide band, low in it
        for b in s.betas.values():
            b.zero_()
            b[-1] = 3.0
        for ratio in (0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8):
            for g in s.groups().values():
                if g.alpha is not None:
                    g.alpha.zero_()
                    g.alpha[min(range(len(g.widths)), key=lambda i: abs(g.widths[i] - ratio * g.channels))] = 3.0
            if band.within() and band.current_cost() < band.target - 0.05 * band.full:
                break
    assert band.within()
    start = band.current_cost()
    assert band.decode()[2] == 0  # without fill: already in the band, nothing moves
    fill = ArchStepper(s, "flops", 0.6, 0.2, 2.0, 0.05, 0.0, fill=True)
    widths, depths, moves = fill.decode()
    cost = fill._cost_of(widths, depths)
    assert moves > 0 and start < cost <= fill.target and fill.within(widths, depths)
    for n, g in s.groups().items():
        i = g.widths.index(widths[n])
        if i + 1 < len(g.widths):
            assert fill._cost_of({**widths, n: g.widths[i + 1]}, depths) > fill.target
    # the default: filled for a latency target, TAS's band for FLOPs and params
    assert SearchConfig(latency_ratio=0.5).fill and not SearchConfig(flops_ratio=0.5).fill
    assert SearchConfig(flops_ratio=0.5, fill_budget=True).fill
