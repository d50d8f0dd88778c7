"""Undecayed pruning: channel scores against the conv weight gradient worked out by hand (unfold),
the decay term, the kept channels, and search.py's path (run_baseline) end to end."""
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tas.prune.arch import Arch
from tas.baselines import create_baseline_arch, run_baseline
from tas.baselines.undecayed import undecayed_channel_scores
from tas.errors import TasError
from tas.prune.families import describe_model
from conftest import trained_like_resnet20

SIZE = (1, 16, 16)


_model = trained_like_resnet20


def _batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(n, *SIZE, generator=g), torch.randint(0, 10, (n,), generator=g)) for n in (5, 3)]


def _hand_weight_grad(model: nn.Module, batches) -> tuple[torch.Tensor, torch.Tensor]:
    """layer1.1.conv1's weight and ∂(mean CE over all samples)/∂W, from its input patches and output gradient."""
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    conv = model.layer1[1].conv1
    seen = {}

    def keep(module, inputs, output):
        output.retain_grad()
        seen["in"], seen["out"] = inputs[0].detach(), output

    h = conv.register_forward_hook(keep)
    F.cross_entropy(model(x), y).backward()  # eval mode: BN is per sample, so one batch = the two
    h.remove()
    model.zero_grad(set_to_none=True)
    patches = F.unfold(seen["in"], 3, padding=1)                    # N, C_in*9, H*W
    delta = seen["out"].grad.flatten(2)                             # N, C_out, H*W
    grad = torch.einsum("nop,nkp->ok", delta, patches).view_as(conv.weight)
    return conv.weight.detach(), grad


def test_scores_match_the_weight_gradient_by_hand():
    model, batches = _model(), _batches()
    graph = describe_model(model)
    w, grad = _hand_weight_grad(model, batches)
    scores = undecayed_channel_scores(model, graph, batches)
    expected = (w * grad).abs().flatten(1).sum(1).double()
    assert torch.allclose(scores["layer1.1.conv1"], expected, rtol=1e-4, atol=1e-12)
    assert expected.max() > 0
    # with the decay term added back (gradient pruning on the decayed objective)
    decayed = undecayed_channel_scores(model, graph, batches, weight_decay=0.1)
    assert torch.allclose(decayed["layer1.1.conv1"], (w * (grad + 0.1 * w)).abs().flatten(1).sum(1).double(),
                          rtol=1e-4, atol=1e-12)
    assert not torch.allclose(decayed["layer1.1.conv1"], expected)
    # the stream a residual stage shares sums its producers (every block's conv2 and the downsample)
    assert torch.all(scores["layer2"] > 0) and len(scores) == len(graph.groups)


def test_baseline_keeps_the_highest_scores():
    model, batches = _model(), _batches()
    arch = create_baseline_arch("undecayed", model, 0.5, input_size=SIZE, model_name="cifar_resnet20",
                                batches=batches)
    scores = undecayed_channel_scores(model, describe_model(model), batches)
    for n, g in arch.groups.items():
        kept = set(g["indices"])
        top = set(torch.topk(scores[n], len(kept)).indices.tolist())
        assert kept == top, n
    l1 = create_baseline_arch("l1", model, 0.5, input_size=SIZE, model_name="cifar_resnet20")
    assert arch.widths == l1.widths and arch.flops == l1.flops
    with pytest.raises(TasError, match="calibration"):
        create_baseline_arch("undecayed", model, 0.5, input_size=SIZE, model_name="cifar_resnet20")


def test_run_baseline_undecayed_and_task_aware(tmp_path, teacher_run):
    for method, extra in (("undecayed", {}), ("task-aware", {"task_classes": [0, 3, 7]})):
        out = tmp_path / method
        result = run_baseline({"method": method, "teacher": str(teacher_run), "dataset": "digits", "limit": 64,
                               "batch_size": 16, "calibration_batches": 2, "flops_ratio": 0.6, "device": "cpu",
                               "output": str(out), **extra})
        arch = Arch.from_json(out / "arch.json")
        assert result["method"] == arch.method == method and arch.flops_ratio <= 0.6
        config = json.loads((out / "config.json").read_text())
        assert config["search"]["method"] == method and "batches" not in config["search"]
    assert arch.meta["task_classes"] == [0, 3, 7]
    with pytest.raises(TasError, match="task-classes"):
        run_baseline({"method": "task-aware", "teacher": str(teacher_run), "dataset": "digits", "limit": 64,
                      "flops_ratio": 0.6, "device": "cpu", "output": str(tmp_path / "no_task")})
