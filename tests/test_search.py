"""search.py end to end on a tiny teacher (run directory, what the cost loss does, TensorBoard tags, bad
input) and the architecture step and decode on their own."""
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import tas
from tas.prune.arch import Arch
from tas.cli import run_main
from tas.prune.flops import count_flops

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import allocation  # noqa: E402  (benchmarks/allocation.py)
FLAGS = ["--dataset", "digits", "--limit", "256", "--batch-size", "32", "--epochs", "2", "--log-every", "2",
         "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def search_run(tmp_path_factory, search_script, teacher_run):
    out = tmp_path_factory.mktemp("search") / "run"
    # arch lr 0.3: the 16 architecture steps of this tiny search then move the logits far enough
    # for the cost loss's effect to show (at the default 0.05 it needs ~15 steps from one side)
    assert search_script.main(FLAGS + ["--teacher", str(teacher_run), "--flops-ratio", "0.5", "--arch-lr", "0.3",
                                       "--log-every", "1", "--output", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def tas_loss_run(tmp_path_factory, search_script, teacher_run):
    """search_run's search with the paper's cost loss (--cost-loss tas) instead of the controller."""
    out = tmp_path_factory.mktemp("search_tas") / "run"
    assert search_script.main(FLAGS + ["--teacher", str(teacher_run), "--flops-ratio", "0.5", "--arch-lr", "0.3",
                                       "--log-every", "1", "--cost-loss", "tas", "--output", str(out)]) == 0
    return out


def test_search_writes_run(search_run):
    arch = Arch.from_json(search_run / "arch.json")
    metrics = json.loads((search_run / "metrics.json").read_text())
    assert metrics["flops"] == arch.flops and metrics["params"] == arch.params
    history = json.loads((search_run / "arch_history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert (search_run / "supernet.safetensors").is_file()
    slim = tas.load_slim(search_run)
    assert count_flops(slim, arch.input_size) == arch.flops
    assert slim(torch.randn(2, *arch.input_size)).shape == (2, 10)


def test_search_cost_loss_steers_the_expected_cost_toward_the_target(tas_loss_run):
    """What the architecture steps logged, before the final decode: each step's cost loss is
    +log E while the argmax costs over 0.5 of the FLOPs, -log E under 0.45, 0 between; and the
    expected FLOPs, which start near 0.3 (uniform logits), spend the second half of the search at
    least twice as close to 0.5."""
    full = Arch.from_json(tas_loss_run / "arch.json").full_flops
    acc = EventAccumulator(str(tas_loss_run), size_guidance={"scalars": 0})
    acc.Reload()
    series = {t: [e.value for e in acc.Scalars(f"search/{t}")] for t in ("expected_ratio", "derived_ratio", "cost_loss")}
    # 2 epochs x 8 architecture steps, then the landing steps (as many as metrics.json reports: how
    # many a search needs follows the CPU's float rounding, which moves its trajectory)
    landing = json.loads((tas_loss_run / "metrics.json").read_text())["landing_steps"]
    assert len(series["cost_loss"]) == 16 + landing
    for expected, derived, lc in zip(*series.values()):
        if derived > 0.5:
            assert lc == pytest.approx(math.log(expected * full), rel=1e-5)
        elif derived < 0.45:
            assert lc == pytest.approx(-math.log(expected * full), rel=1e-5)
        else:
            assert lc == 0.0
    assert {math.copysign(1, lc) for lc in series["cost_loss"] if lc} == {1.0, -1.0}  # both branches ran
    # The second half's median, not the last step: the ±log E switch can kick the last value back
    # (a float-rounding change of the fused BN moved one step across the band's edge).
    first, late = series["expected_ratio"][0], statistics.median(series["expected_ratio"][8:16])
    assert abs(late - 0.5) < abs(first - 0.5) / 2, series["expected_ratio"]


def test_search_keeps_the_teachers_most_important_channels(search_run, teacher_run):
    from tas.prune.channel_order import channel_scores
    from tas.prune.load import load_run

    arch = Arch.from_json(search_run / "arch.json")
    assert arch.meta["channel_order"] == "l1"
    teacher, _ = load_run(teacher_run)
    scores = channel_scores(teacher, "l1")
    narrowed = [n for n, g in arch.groups.items() if g["width"] < g["channels"]]
    assert narrowed
    for n in narrowed:  # indices name the teacher's channels as trained: its top-L1 ones
        top = torch.topk(scores[n], arch.groups[n]["width"]).indices.sort().values.tolist()
        assert arch.groups[n]["indices"] == top, n


def test_search_tensorboard_tags(search_run):
    acc = EventAccumulator(str(search_run), size_guidance={"images": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("search/weight_loss", "search/arch_loss", "search/cost_loss", "search/expected_ratio",
                "search/derived_ratio", "search/sharp_ratio", "search/lambda1", "search/sharp_lambda1",
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
    # started over: the replaced run's TensorBoard logs go (both the first run's and the resume's)
    before = set(out.glob("events.out.tfevents.*"))
    assert len(before) == 2
    assert search_script.main(base + ["--overwrite"]) == 0
    after = set(out.glob("events.out.tfevents.*"))
    assert len(after) == 1 and not after & before


def test_search_kd_trains_the_weights_on_the_teachers_soft_targets(tmp_path, search_script, teacher_run, monkeypatch):
    """--kd-alpha: every weight step's loss is the KD objective against the frozen teacher, with the
    given α and T (the architecture step keeps its CE); the teacher's logits are its own (a forward
    of the loaded teacher in eval mode on the same images gives them), not the supernet's."""
    from tas.nas import searcher
    from tas.prune.load import load_run
    from tas.train import distill

    teacher, _ = load_run(teacher_run)
    calls = []
    real_teacher_forward = {}

    def recording(student, t_logits, targets, alpha, temperature):
        calls.append((student.requires_grad, t_logits.requires_grad, alpha, temperature, t_logits.detach().clone()))
        return searcher_kd(student, t_logits, targets, alpha, temperature)

    searcher_kd = distill.kd_loss
    monkeypatch.setattr(distill, "kd_loss", recording)
    original_step = searcher.Searcher._step

    def step(self, epoch, in_epoch, xt, yt, val):  # the images of each weight step, for the check below
        real_teacher_forward[len(calls)] = teacher.eval()(xt).detach()
        return original_step(self, epoch, in_epoch, xt, yt, val)

    monkeypatch.setattr(searcher.Searcher, "_step", step)
    out = tmp_path / "kd"
    assert search_script.main(FLAGS + ["--teacher", str(teacher_run), "--kd-alpha", "0.7", "--kd-temperature", "3",
                                       "--output", str(out)]) == 0
    steps = json.loads((out / "metrics.json").read_text())["steps"]
    assert len(calls) == steps > 0
    assert all(c[:4] == (True, False, 0.7, 3.0) for c in calls)
    for i, c in enumerate(calls):
        assert torch.allclose(c[4], real_teacher_forward[i], atol=1e-5)


def _run(args, cwd=REPO):
    return subprocess.run([sys.executable, "search.py", *args], cwd=cwd, capture_output=True, text=True)


def _run_here(search_script, capsys, args) -> tuple[int, str]:
    """search.py's main behind the CLI's error handling, in this process (no interpreter and torch
    import per case): ``(exit code, stderr)``. An unexpected exception propagates and fails the test."""
    capsys.readouterr()
    code = run_main(search_script.main, args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("extra,message,process", [
    (["--flops-ratio", "0.001"], "unreachable: the smallest architecture", False),
    (["--space", "__SPACE__"], "unknown keys", True),  # one case through the real command line
    (["--model", "resnet18"], "does not match the teacher", False),
    (["--latency-ratio", "0.01"], "latency target 0.010 is unreachable", False),
])
def test_search_bad_input(tmp_path, teacher_run, search_script, capsys, extra, message, process):
    space = tmp_path / "space.yaml"
    space.write_text("family: resnet\nratios: [0.5, 1.0]\nshape: round\n")
    extra = [str(space) if e == "__SPACE__" else e for e in extra]
    args = FLAGS + ["--teacher", str(teacher_run), "--output", str(tmp_path / "o"), *extra]
    if process:
        r = _run(args)
        code, err = r.returncode, r.stderr
    else:
        code, err = _run_here(search_script, capsys, args)
    assert code == 2, err
    # A latency table built on a busy machine may print its noise warning first; the refusal itself is
    # still one error line and nothing else.
    lines = err.splitlines()
    assert message in err and "Traceback" not in err
    assert [line for line in lines if not line.startswith("warning:")] == [lines[-1]] and lines[-1].startswith("error:")
    assert not (tmp_path / "o" / "arch.json").exists()


def test_search_refuses_teacher_whose_weights_do_not_fit(tmp_path, teacher_run, search_script, capsys):
    bad = tmp_path / "teacher"
    bad.mkdir()
    cfg = json.loads((teacher_run / "config.json").read_text())
    cfg["model"] = "cifar_resnet32"
    (bad / "config.json").write_text(json.dumps(cfg))
    (bad / "model.safetensors").write_bytes((teacher_run / "model.safetensors").read_bytes())
    code, err = _run_here(search_script, capsys, FLAGS + ["--teacher", str(bad), "--output", str(tmp_path / "o")])
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1


def test_search_refuses_unsupported_model(tmp_path, search_script, capsys):
    from tas.io.rundir import save_run
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, in_chans=1, num_classes=10)
    save_run(tmp_path / "vit", vit, model_name="vit_tiny_patch16_224",
             model_kwargs={"num_classes": 10, "in_chans": 1, "img_size": 16, "patch_size": 8}, input_size=(1, 16, 16))
    code, err = _run_here(search_script, capsys, FLAGS + ["--teacher", str(tmp_path / "vit"), "--output", str(tmp_path / "o")])
    assert code == 2 and "supported families are" in err


@pytest.mark.parametrize("side", ["above", "below"])
def test_cost_loss_alone_brings_the_argmax_into_the_band(side):
    """Architecture steps with the TAS cost loss (cost weight 2, Adam lr 0.05), from an argmax
    at the full network (above) or the smallest (below) a 0.5 FLOPs target: while the argmax is
    over the target every step lowers the expected cost, while under the band every step raises
    it, and the argmax itself reaches the band with nothing left for the decode to do."""
    import timm

    from tas.nas.arch_step import ArchStepper
    from tas.nas.supernet import create_supernet

    torch.manual_seed(0)
    s = create_supernet(timm.create_model("cifar_resnet20", num_classes=10), input_size=(3, 8, 8)).train()
    s.generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # logits rising with the width (above) or falling (below)
        for p in s.arch_parameters():
            p.copy_(torch.linspace(-1, 1, p.numel()) * (1 if side == "above" else -1))
    stepper = ArchStepper(s, "flops", 0.5, 0.05, 2.0, 0.05, 1e-3, cost_loss="tas")
    start = stepper.current_cost() / stepper.full
    assert start == 1.0 if side == "above" else start < 0.1
    data = torch.Generator().manual_seed(1)
    expected = stepper.expected_cost().item()
    for _ in range(40):
        if stepper.within():
            break
        too_big = stepper.current_cost() > stepper.target
        stepper.step(torch.randn(4, 3, 8, 8, generator=data), torch.randint(0, 10, (4,), generator=data))
        new = stepper.expected_cost().item()
        assert new < expected if too_big else new > expected, (too_big, new / stepper.full, expected / stepper.full)
        expected = new
    assert stepper.within(), stepper.current_cost() / stepper.full  # the argmax, before any decode
    assert stepper.decode()[2] == 0
    # inside the band the cost loss rests: the next step's cost term is 0
    terms = stepper.step(torch.randn(4, 3, 8, 8, generator=data), torch.randint(0, 10, (4,), generator=data))
    assert terms["cost_loss"] == 0.0 and terms["arch_loss"] == terms["arch_ce"]


def test_budget_decode_gives_up_the_least_probable_width_first():
    """An argmax over budget moves into the band by shrinking what the logits care least about."""
    import timm

    from tas.nas.arch_step import ArchStepper
    from tas.nas.supernet import create_supernet

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


def test_budget_decode_does_not_cut_below_the_band_when_it_can_land_in_it():
    """Over the budget, a step that cuts below the band (here a whole block, which the flat depth
    logits give up almost for free) is taken only when no step stays in or above the band: the
    ratio of log-probability to cost alone would drop the block and end under the band, where no
    step up fits (the widths are full, the block costs more than the band is wide)."""
    import timm

    from tas.nas.arch_step import ArchStepper
    from tas.nas.supernet import create_supernet

    s = create_supernet(timm.create_model("cifar_resnet20", num_classes=10), input_size=(3, 32, 32))
    with torch.no_grad():
        for g in s.groups().values():
            if g.alpha is not None:
                g.alpha.zero_()
                g.alpha[-1] = 5.0
        for b in s.betas.values():
            b.zero_()
            b[-1] = 0.5
    stepper = ArchStepper(s, "flops", 0.95, 0.05, 2.0, 0.05, 0.0)  # the band [0.9025, 0.95]
    block = 1 - s.cost.exact("flops", *s.argmax()) / stepper.full  # the argmax is the full network
    dropped = {**s.argmax()[1], "layer1": s.stage_depths["layer1"][-2]}
    below = s.cost.exact("flops", s.argmax()[0], dropped) / stepper.full
    assert block == 0 and below < 0.9025  # one block of layer1 cuts below the band
    widths, depths, moves = stepper.decode()
    assert moves > 0 and stepper.within(widths, depths), stepper._cost_of(widths, depths) / stepper.full


def test_fill_decode_spends_the_budget_up_to_the_target():
    """fill: an argmax inside the band still grows until no single step up fits under the target."""
    import timm

    from tas.nas.arch_step import ArchStepper
    from tas.nas.config import SearchConfig
    from tas.nas.supernet import create_supernet

    torch.manual_seed(0)
    s = create_supernet(timm.create_model("cifar_resnet20", num_classes=10), input_size=(3, 32, 32))
    band = ArchStepper(s, "flops", 0.6, 1 / 3, 2.0, 0.05, 0.0)  # the band [0.4, 0.6]
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
    fill = ArchStepper(s, "flops", 0.6, 1 / 3, 2.0, 0.05, 0.0, fill=True)
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


def test_the_allocation_benchmark_reads_the_pre_decode_report(search_run):
    """benchmarks/allocation.py finds the pre-decode argmax ratio and the decode moves in a search's
    metrics.json under the names the search writes them (arch.json's meta records the same figures)."""
    metrics = json.loads((search_run / "metrics.json").read_text())
    meta = json.loads((search_run / "arch.json").read_text())["meta"]
    ratio, moves = allocation.search_diagnostics(metrics)
    assert ratio is not None and moves is not None
    assert ratio == pytest.approx(meta["pre_decode_ratio"]) and moves == meta["projection_steps"]
    assert 0 < ratio < 1.5
    # the band the benchmarks count "in band" against: a fraction of the target below it
    assert metrics["band"] == pytest.approx([meta["target_ratio"] * (1 - meta["tolerance"]), meta["target_ratio"]])


class _StoppedAfterSave(Exception):
    pass


def test_search_resumed_before_its_landing_steps_ends_as_the_uninterrupted_one(tmp_path, monkeypatch, search_script,
                                                                               teacher_run):
    """The landing steps are not checkpointed: a search stopped right after its last epoch's state was
    saved and resumed takes them again, and must take the same ones (the global RNG, which draws the
    augmentation of their batches, is the saved one, not what the resumed process left it at), so it
    ends exactly as the uninterrupted search: architecture, pre-decode argmax, logits, weights."""
    from safetensors.torch import load_file

    from tas.nas import resume

    # a 0.5 target that the 8 architecture steps do not reach: landing steps follow
    flags = FLAGS + ["--teacher", str(teacher_run), "--flops-ratio", "0.5", "--epochs", "1", "--arch-lr", "0.3",
                     "--landing-steps", "2", "--landing-lr", "1"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert search_script.main(flags + ["--output", str(straight)]) == 0
    save = resume.save_state

    def save_then_stop(run_dir, state):
        save(run_dir, state)
        if int(state["epoch"]) == 1:
            raise _StoppedAfterSave

    with monkeypatch.context() as m:
        m.setattr(resume, "save_state", save_then_stop)
        with pytest.raises(_StoppedAfterSave):
            search_script.main(flags + ["--output", str(resumed)])
    assert search_script.main(flags + ["--output", str(resumed), "--resume"]) == 0
    a, b = (json.loads((run / "metrics.json").read_text()) for run in (straight, resumed))
    assert a["landing_steps"] > 0
    assert (a["pre_decode_ratio"], a["landing_steps"]) == (b["pre_decode_ratio"], b["landing_steps"])
    assert json.loads((straight / "arch.json").read_text()) == json.loads((resumed / "arch.json").read_text())
    for weights in ("supernet.safetensors", "model.safetensors"):  # the logits the landing steps moved; the slim net
        wa, wb = load_file(str(straight / weights)), load_file(str(resumed / weights))
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), (weights, [k for k in wa if not torch.equal(wa[k], wb[k])][:5])
