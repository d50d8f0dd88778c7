"""SequentialAttention++: attention constraints, ranking by attention, schedule, resets, equivalence."""
import json
import math

import pytest
import timm
import torch

import tas  # noqa: F401
from tas.nas.attention import SappSchedule, constrained_attention, sparsity_ramp
from tas.prune.materialize import materialize
from tas.nas.attention import SappController
from tas.nas.supernet import create_supernet


@pytest.mark.parametrize("scale", [0.1, 1.0, 5.0, 50.0])
def test_attention_has_mean_one_and_respects_clip(scale):
    torch.manual_seed(0)
    logits = scale * torch.randn(16)
    a = constrained_attention(logits, 0.25, 4.0)
    assert float(a.mean()) == pytest.approx(1.0, abs=1e-5)
    assert float(a.min()) >= 0.25 - 1e-6 and float(a.max()) <= 4.0 + 1e-6
    # the projection is monotone: sorted by logit, attention never decreases
    assert torch.all(a[torch.argsort(logits)].diff() >= -1e-6)


def test_attention_gradient_is_the_softmax_jacobian_on_unclipped_entries():
    """The projection's shift is a constant of the backward: d/dL Σ c_i·A_i = n·p_j·(c_j·[j free]
    − Σ_{i free} p_i·c_i), where p = softmax(L) and "free" are the entries inside the clip bounds."""
    logits = torch.tensor([3.0, 0.5, 0.0, -0.2, -1.0, -2.5, 1.0, 0.2], dtype=torch.float64, requires_grad=True)
    c = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0, 2.0, 0.0, 1.5], dtype=torch.float64)
    lo, hi = 0.3, 2.5
    a = constrained_attention(logits, lo, hi)
    (a * c).sum().backward()
    free = (a > lo + 1e-9) & (a < hi - 1e-9)
    assert 0 < int(free.sum()) < 8  # both kinds of entries occur
    n, p = 8, torch.softmax(logits.detach(), dim=0)
    expected = n * p * (c * free - (p * c * free).sum())
    assert torch.allclose(logits.grad, expected, atol=1e-9)


def test_sparsity_ramp_formula():
    s, c = 0.6, 4.0
    assert sparsity_ramp(0.0, s) == 0.0
    assert sparsity_ramp(1.0, s) == pytest.approx(s)
    assert sparsity_ramp(0.5, s) == pytest.approx(s * (1 - math.exp(-c * 0.5)) / (1 - math.exp(-c)))


def test_schedule_phases():
    sched = SappSchedule(100, warmup=0.2, sparsify=0.15, sparse=0.1, dense=0.1, rounds=2)
    names = [p[0] for p in sched.phases]
    assert names == ["warmup", "sparsify", "sparse", "dense", "sparsify", "sparse"]
    assert sched.phase(0)[1] == "warmup" and sched.phase(20)[1] == "sparsify"
    assert sched.phase(99)[1] == "sparse" and sched.phases[-1][2] == 100
    with pytest.raises(ValueError):
        SappSchedule(100, warmup=0.5, sparsify=0.3, sparse=0.3, dense=0.1, rounds=2)


def _sapp_supernet(name="cifar_resnet20", size=(3, 16, 16)):
    model = timm.create_model(name, num_classes=10, in_chans=size[0]).eval()
    return create_supernet(model, input_size=size, model_name=name, selection="sapp"), model, size


def test_ranking_follows_attention_not_magnitude():
    s, _, _ = _sapp_supernet()
    g = s.groups()["layer3"]
    assert g.block_size == 8 and g.attn_logits.numel() == 8
    with torch.no_grad():
        # block 0 has by far the largest filters, block 7 the highest attention
        for layer in s.graph.layers:
            if layer.kind == "conv" and layer.out_group == "layer3":
                w = s.model.get_submodule(layer.name).conv.weight
                w[:8].mul_(100.0)
        g.attn_logits.copy_(torch.linspace(-1, 1, 8))
    g.rank_by_attention()
    widths = {n: gs.widths[-1] for n, gs in s.groups().items()}
    widths["layer3"] = 16
    arch = s.make_arch(widths, {n: d[-1] for n, d in s.stage_depths.items()})
    assert arch.groups["layer3"]["indices"] == list(range(48, 64))  # blocks 6 and 7, not block 0


def test_prune_lowest_masks_lowest_attention_blocks():
    s, _, _ = _sapp_supernet()
    g = s.groups()["layer3"]
    with torch.no_grad():
        g.attn_logits.copy_(torch.tensor([3.0, -2.0, 1.0, -1.0, 0.0, 2.0, -3.0, 0.5]))
    g.prune_lowest(3)
    assert g.mask.tolist() == [True, False, True, False, True, True, False, True]
    # masked blocks rank last
    assert set(g.order[-24:].div(8, rounding_mode="floor").tolist()) == {1, 3, 6}


def test_optimiser_state_is_reset_at_phase_boundaries():
    s, _, size = _sapp_supernet()
    s.train()
    opt = torch.optim.SGD(list(s.weight_parameters()), lr=0.01, momentum=0.9)
    attn = torch.optim.Adam(list(s.attention_parameters()), lr=0.01)
    ctl = SappController(s, SappSchedule(10, warmup=0.1, sparsify=0.2, sparse=0.15, dense=0.15, rounds=2), [opt, attn])
    x, y = torch.randn(4, *size), torch.randint(0, 10, (4,))
    seen = []
    for step in range(10):
        phase, _ = ctl.step(step)
        before = len(opt.state)
        loss = torch.nn.functional.cross_entropy(s(x), y)
        opt.zero_grad(), attn.zero_grad()
        loss.backward()
        opt.step(), attn.step()
        seen.append((phase, before))
    # the first step of every phase after the first starts with empty optimiser state
    starts = [i for i in range(1, 10) if seen[i][0] != seen[i - 1][0]]
    assert starts and all(seen[i][1] == 0 for i in starts)
    assert all(seen[i][1] > 0 for i in range(1, 10) if i not in starts)
    assert ctl.resets == len(starts)


@pytest.mark.parametrize("name,size", [("cifar_resnet20", (1, 32, 32)), ("seresnext26d_32x4d", (3, 64, 64))])
def test_sapp_architectures_materialise_exactly(name, size):
    s, _, _ = _sapp_supernet(name, size)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for g in s.groups().values():
            if g.attn_logits is not None:
                g.attn_logits.copy_(torch.randn(g.attn_logits.shape, generator=gen))
    for g in s.groups().values():
        if g.attn_logits is not None:
            g.prune_lowest(1)
    s.train()
    s(torch.randn(2, *size))  # a search step moves the per-candidate BN statistics
    s.eval()
    x = torch.randn(2, *size)
    for _ in range(2):
        arch = s.random_arch(gen)
        # the attention's ranking, not the first channels, decides what is kept
        assert any(g["indices"] != list(range(g["width"])) for g in arch.groups.values())
        s.set_arch(arch)
        with torch.no_grad():
            slim = materialize(s, arch).eval()
            assert (s(x) - slim(x)).abs().max() <= 1e-4
        assert tas.count_flops(slim, size) == arch.flops
    assert arch.meta["selection"] == "sapp"


#: a 16-step SA++ search (2 epochs × 8) for 0.6 of the FLOPs: warm-up [0, 3), sparsify [3, 6), sparse [6, 7), dense [7, 9),
#: sparsify [9, 11), sparse [11, 16); a state after every step; attention lr high enough to matter
SAPP_FLAGS = ["--dataset", "digits", "--limit", "256", "--batch-size", "32", "--epochs", "2", "--log-every", "1",
              "--no-progress", "--device", "cpu", "--selection", "sapp", "--flops-ratio", "0.6",
              "--attn-lr", "0.2", "--checkpoint-every", "1"]


@pytest.fixture(scope="module")
def sapp_search(tmp_path_factory, teacher_run, search_script):
    """A finished SA++ search run directory (do not modify it)."""
    out = tmp_path_factory.mktemp("sapp") / "run"
    assert search_script.main(["--teacher", str(teacher_run), *SAPP_FLAGS, "--output", str(out)]) == 0
    return out


def _load_supernet(run, teacher_run, weights=None):
    from tas.prune.arch import Arch
    from tas.io.checkpoint import load_weights
    from tas.prune.load import load_run

    teacher, _ = load_run(teacher_run)
    arch = Arch.from_json(run / "arch.json")
    s = create_supernet(teacher, input_size=arch.input_size, model_name=arch.model, selection="sapp")
    s.load_state_dict(weights if weights is not None else load_weights(run / "supernet.safetensors"))
    return s.eval(), arch


def test_sapp_search_end_to_end(sapp_search):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tas.prune.arch import Arch

    arch = Arch.from_json(sapp_search / "arch.json")
    assert arch.meta["selection"] == "sapp"
    acc = EventAccumulator(str(sapp_search), size_guidance={"images": 0, "histograms": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"sapp/phase", "sapp/sparsity"} <= set(tags["scalars"])
    assert "sapp_mask" in tags["images"] and "attention/layer3" in tags["histograms"]
    phases = [e.value for e in acc.Scalars("sapp/phase")]
    assert phases[:3] == [0, 0, 0] and phases[3] == 1 and phases[-1] == 2  # warm-up, sparsify, ..., sparse
    # The cost loss, not the final decode, moves the width distributions towards the 0.6 target:
    # the expected FLOPs ratio rises from the ~0.3 of the near-uniform initial logits.
    expected = [e.value for e in acc.Scalars("search/expected_ratio")]
    assert expected[0] < 0.35 and expected[-1] > expected[0] + 0.02  # 0.30 -> 0.33; 0.27 with no cost loss


def test_sapp_search_ends_with_the_function_it_searched(sapp_search, teacher_run):
    """The final widths stay within the last phase's masks, the masks become exactly the kept
    blocks, and hard mode, search mode restricted to the architecture and the slim network agree."""
    from tas.io.checkpoint import load_state
    from tas.prune.load import load_slim

    # Within the band although the decode could not widen a group past its mask: the last
    # sparsification ramped towards the budgeted widths, not the argmax (0.43 < 0.55 otherwise).
    assert json.loads((sapp_search / "metrics.json").read_text())["within_tolerance"]
    s, arch = _load_supernet(sapp_search, teacher_run)
    last_phase, _ = _load_supernet(sapp_search, teacher_run, load_state(sapp_search)["supernet"])
    for n, g in s.groups().items():
        if g.attn_logits is None:
            continue
        kept = {int(g.block_of[i]) for i in arch.groups[n]["indices"]}
        assert kept <= set(last_phase.groups()[n].mask.nonzero().flatten().tolist()), n
        assert kept == set(g.mask.nonzero().flatten().tolist()), n
    x = torch.randn(8, *arch.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hard = s.set_arch(arch)(x)
        slim = load_slim(sapp_search).eval()(x)
        for g in s.groups().values():
            if g.attn_logits is not None:
                g.attn_strength.fill_(0.0)
        without = s(x)
        for g in s.groups().values():
            if g.attn_logits is not None:
                g.attn_strength.fill_(1.0)
        search = _one_candidate(s, arch)(x)
    scale = 1 + hard.abs().max()
    assert (hard - without).abs().max() > 1e-3 * scale  # the learned attention matters
    assert (search - hard).abs().max() <= 1e-6 * scale
    assert (slim - hard).abs().max() <= 1e-5 * scale


class _Interrupted(Exception):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("at", [9, 10])  # 9: the last step of a dense phase; 10: mid-sparsification
def test_sapp_resume_mid_phase_is_identical(tmp_path, monkeypatch, sapp_search, teacher_run, search_script, at):
    """A search interrupted right after the state of step ``at`` and resumed ends exactly as the
    uninterrupted one: architecture, attention, masks, rankings, weights."""
    from safetensors.torch import load_file

    from tas.nas import resume

    save = resume.save_state

    def save_then_stop(run_dir, state):
        save(run_dir, state)
        if int(state["step"]) == at:
            raise _Interrupted

    out = tmp_path / "run"
    flags = ["--teacher", str(teacher_run), *SAPP_FLAGS, "--output", str(out)]
    with monkeypatch.context() as m:
        m.setattr(resume, "save_state", save_then_stop)
        with pytest.raises(_Interrupted):
            search_script.main(flags)
    assert not (out / "arch.json").exists()
    assert search_script.main(flags + ["--resume"]) == 0
    assert json.loads((out / "arch.json").read_text()) == json.loads((sapp_search / "arch.json").read_text())
    a, b = load_file(str(sapp_search / "supernet.safetensors")), load_file(str(out / "supernet.safetensors"))
    assert a.keys() == b.keys() and any(k.endswith(".mask") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


def test_final_decode_keeps_widths_within_the_last_mask():
    """A width distribution that favours more channels than the mask left: the decode takes the
    cap, whose probability includes the wider candidates' (they computed the cap's channels)."""
    from tas.nas.arch_step import ArchStepper

    s, _, _ = _sapp_supernet()
    g = s.groups()["layer3"]  # widths 16, 24, ..., 64; 8 blocks of 8 channels
    p = torch.tensor([0.3, 0.02, 0.02, 0.02, 0.02, 0.12, 0.5])  # 16 beats 48 unless 56/64 count as 48
    with torch.no_grad():
        g.alpha.copy_(p.log())
        g.attn_logits.copy_(torch.tensor([3.0, -2.0, 1.0, -1.0, 0.0, 2.0, -3.0, 0.5]) / 3)  # none clipped
    g.prune_lowest(2)  # blocks 1 and 6 masked: room for 48 channels
    ctl = SappController(s, SappSchedule(10), [])
    assert ctl.caps()["layer3"] == 48
    widths = {n: gs.widths[int(gs.probs().argmax())] for n, gs in s.groups().items()}
    depths = {n: d[int(s.depth_probs(n).argmax())] for n, d in s.stage_depths.items()}
    widths["layer3"] = 48
    cost = s.cost.exact("flops", widths, depths)  # this architecture is in the band: no moves
    stepper = ArchStepper(s, "flops", cost / s.full["flops"], 0.5, 2.0, 0.05, 1e-3)
    got, got_depths, moves = stepper.decode(caps=ctl.caps())
    assert (got, got_depths, moves) == (widths, depths, 0)
    arch = s.make_arch(got, got_depths)
    ctl.finalize(arch)
    assert arch.groups["layer3"]["indices"] == [i for b in (0, 2, 3, 4, 5, 7) for i in range(8 * b, 8 * b + 8)]
    assert g.mask.tolist() == [True, False, True, True, True, True, False, True]


def _one_candidate(s, arch):
    """Search mode that can only draw ``arch``: its width and depth logits one-hot (−1e4 elsewhere,
    so the Gumbel weights are exactly 1 and 0) and one fragment per group. The attention and the
    per-candidate BNs are search mode's own."""
    with torch.no_grad():
        for n, g in s.groups().items():
            if g.alpha is not None:
                g.alpha.fill_(-1e4)[g.widths.index(arch.groups[n]["width"])] = 0
        for key, beta in s.betas.items():
            beta.fill_(-1e4)[s.stage_depths[key.replace("__", ".")].index(arch.stages[key.replace("__", ".")]["depth"])] = 0
    s.k, s.generator = 1, torch.Generator().manual_seed(0)
    return s.search()


@pytest.mark.parametrize("name,size", [("cifar_resnet20", (1, 16, 16)), ("mobilenetv3_small_050", (3, 32, 32))])
def test_hard_mode_and_slim_apply_the_attention_as_search_mode_does(name, size):
    """Hard mode == search mode restricted to one candidate == the slim network, with attention
    and masks that change the output. MobileNetV3 has fused hard-swish BNs (the attention must
    scale before the activation to fold into γ, β) and a BN-less head conv (folded into the conv)."""
    from conftest import perturb_bn

    s, _, _ = _sapp_supernet(name, size)
    perturb_bn(s)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for g in s.groups().values():
            if g.attn_logits is not None:
                g.attn_logits.copy_(2 * torch.randn(g.attn_logits.shape, generator=gen))
                g.prune_lowest(1 if g.attn_logits.numel() > 2 else 0)
    arch = s.random_arch(gen)
    x = torch.randn(2, *size)
    s.eval()
    with torch.no_grad():
        hard = s.set_arch(arch)(x)
        slim = materialize(s, arch).eval()(x)
        for g in s.groups().values():
            if g.attn_logits is not None:
                g.attn_strength.fill_(0.0)
        without = s(x)  # the attention ignored (masks kept): must differ, or the test proves nothing
        for g in s.groups().values():
            if g.attn_logits is not None:
                g.attn_strength.fill_(1.0)
        search = _one_candidate(s, arch)(x)
    scale = 1 + hard.abs().max()  # perturbed BNs make MobileNetV3's logits large: compare relatively
    assert (hard - without).abs().max() > 1e-2 * scale
    assert (search - hard).abs().max() <= 1e-6 * scale
    assert (slim - hard).abs().max() <= 1e-5 * scale


def test_hard_mode_computes_each_groups_attention_once_per_state(monkeypatch):
    """constrained_attention (60 bisection steps, a host sync each) runs once per group per state
    of its logits in hard mode, not in every layer of every forward; an in-place change of the
    logits (an optimiser step, load_state_dict) is seen by the next forward."""
    import tas.nas.groups as sn

    s, _, size = _sapp_supernet()
    calls = []
    monkeypatch.setattr(sn, "constrained_attention", lambda *a, **k: calls.append(1) or constrained_attention(*a, **k))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, *size)
    n_attn = sum(g.attn_logits is not None for g in s.groups().values())
    s.eval().set_arch(s.random_arch(gen))
    with torch.no_grad():
        before = s(x)
        s(x)
        assert 0 < len(calls) <= n_attn
        calls.clear()
        g = next(g for g in s.groups().values() if g.attn_logits is not None and g.attn_logits.numel() > 2)
        g.attn_logits.copy_(3 * torch.randn(g.attn_logits.shape, generator=gen))
        after = s(x)
        assert len(calls) == 1
    fresh = s(x)  # gradients on: computed afresh
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, fresh.detach())
