"""Task-aware calibration: fused channel scores against a hand computation of the norms, the
exclusive/shared split and the fusion; the channel order and the l1-style baseline use them."""
import pytest
import torch

from tas.prune.arch import Arch
from tas.baselines import create_baseline_arch
from tas.prune.channel_order import channel_scores, class_batches, order_teacher, task_aware_scores
from tas.cli import run_main
from tas.errors import TasError
from tas.prune.families import describe_model
from conftest import trained_like_resnet20

SIZE = (1, 16, 16)


_model = trained_like_resnet20


def _data():
    g = torch.Generator().manual_seed(2)
    general = [(torch.randn(6, *SIZE, generator=g), torch.randint(0, 10, (6,), generator=g)) for _ in range(2)]
    # the task's images: a bright bar on the left, a distribution the general data does not have
    bar = torch.zeros(*SIZE)
    bar[:, :, 2:5] = 3.0
    task = [(torch.randn(4, *SIZE, generator=g) + bar, torch.zeros(4, dtype=torch.long))]
    return general, task


def _reader_input(model, batches) -> torch.Tensor:
    """The input of layer1.0.conv2 (relu of bn1's output), taken at bn1, over all batches."""
    outs = []
    h = model.layer1[0].bn1.register_forward_hook(lambda m, i, o: outs.append(torch.relu(o.detach())))
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    h.remove()
    return torch.cat(outs)


def test_fused_scores_match_a_hand_computation():
    model = _model()
    general, task = _data()
    scores = task_aware_scores(model, describe_model(model), general, task, threshold=0.25)
    # group layer1.0.conv1 has one reader, layer1.0.conv2
    w_l1 = model.layer1[0].conv2.weight.detach().abs().sum(dim=(0, 2, 3))
    xg, xt = _reader_input(model, general), _reader_input(model, task)
    ng, nt = xg.pow(2).sum(dim=(0, 2, 3)).sqrt(), xt.pow(2).sum(dim=(0, 2, 3)).sqrt()
    ig, it = w_l1 * ng, w_l1 * nt
    ig, it = ig / ig.mean(), it / it.mean()
    exclusive = nt / 4 ** 0.5 > 1.25 * ng / 12 ** 0.5       # per-sample norms: 4 task, 12 general images
    assert 0 < int(exclusive.sum()) < exclusive.numel()       # both kinds occur here
    expected = torch.where(exclusive, it, (ig + it) / 2)
    assert torch.allclose(scores["layer1.0.conv1"], expected, rtol=1e-4)
    # with no channel exclusive (threshold out of reach) every score is the plain average
    shared = task_aware_scores(model, describe_model(model), general, task, threshold=1e9)
    assert torch.allclose(shared["layer1.0.conv1"], (ig + it) / 2, rtol=1e-4)


def test_order_and_l1_style_selection_use_the_scores():
    model = _model()
    general, task = _data()
    graph = describe_model(model)
    scores = channel_scores(model, "task", graph, general, task_batches=task)
    arch = create_baseline_arch("task-aware", model, 0.5, input_size=SIZE, model_name="cifar_resnet20",
                                batches=general, task_batches=task)
    for n, g in arch.groups.items():
        assert set(g["indices"]) == set(torch.topk(scores[n], g["width"]).indices.tolist()), n
    assert arch.meta["task_classes"] == [0]
    with pytest.raises(ValueError, match="task calibration"):
        channel_scores(model, "task", graph, general)
    # the search's ordering: on the permuted teacher the same data score every group in descending order
    loader = general + task
    order_teacher(model, "task", loader, batches=3, task_classes=[0])
    after = channel_scores(model, "task", graph, loader, task_batches=class_batches(loader, [0], 3))
    for n, s in after.items():
        assert torch.all(s[:-1] >= s[1:] - 1e-5), n
    with pytest.raises(ValueError, match="task's classes"):
        order_teacher(_model(), "task", loader)


def test_class_batches_keeps_only_the_task():
    loader = [(torch.arange(6.0).view(6, 1), torch.tensor([0, 1, 2, 0, 1, 2])),
              (torch.arange(3.0).view(3, 1), torch.tensor([1, 1, 1])),
              (torch.arange(2.0).view(2, 1), torch.tensor([2, 0]))]
    out = class_batches(loader, [2, 0], 5)
    assert [y.tolist() for _, y in out] == [[0, 2, 0, 2], [2, 0]]
    assert out[0][0].flatten().tolist() == [0.0, 2.0, 3.0, 5.0]
    assert len(class_batches(loader, [1], 1)) == 1
    with pytest.raises(TasError, match="none of the task classes"):
        class_batches(loader, [9], 2)


def test_search_config_needs_the_task_classes():
    from tas.nas.config import SearchConfig

    with pytest.raises(TasError, match="--task-classes"):
        SearchConfig(channel_order="task").validate()
    SearchConfig(channel_order="task", task_classes=[0, 2]).validate()


def _search_flags(teacher_run) -> list[str]:
    return ["--teacher", str(teacher_run), "--dataset", "digits", "--limit", "64", "--batch-size", "16",
            "--epochs", "1", "--no-progress", "--device", "cpu", "--flops-ratio", "0.6", "--channel-order", "task"]


def test_search_py_channel_order_task_bad_input(tmp_path, teacher_run, search_script, capsys):
    flags = _search_flags(teacher_run)
    assert run_main(search_script.main, [*flags, "--output", str(tmp_path / "none")]) == 2
    assert "--task-classes" in capsys.readouterr().err
    assert run_main(search_script.main, [*flags, "--task-classes", "11", "--output", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "none of the task classes [11]" in err
    assert not (tmp_path / "absent" / "arch.json").exists()


@pytest.mark.slow
def test_search_py_channel_order_task(tmp_path, teacher_run, search_script):
    flags = _search_flags(teacher_run)
    assert run_main(search_script.main, [*flags, "--task-classes", "1", "7", "--output", str(tmp_path / "ok")]) == 0
    assert Arch.from_json(tmp_path / "ok" / "arch.json").meta["channel_order"] == "task"
