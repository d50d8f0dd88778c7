"""``--epochs`` in fractions: a search or a distillation that stops partway through its last epoch."""
import json

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import tas
from tas.cli import check_epochs, epoch_count, run_main
from tas.errors import CheckpointError, TasError
from tas.io.checkpoint import load_state
from tas.nas.config import SearchConfig
from tas.train.config import TrainConfig
from tas.train.engine import epoch_lengths

QUIET = {"progress": False, "device": "cpu", "log_every": 1}


def _loaders(batches: int, size: int = 16, classes: int = 4):
    g = torch.Generator().manual_seed(0)
    n = 16 * batches
    x, y = torch.randn(2 * n, 1, size, size, generator=g), torch.randint(0, classes, (2 * n,), generator=g)
    return (DataLoader(TensorDataset(x[:n], y[:n]), batch_size=16, shuffle=True),
            DataLoader(TensorDataset(x[n:], y[n:]), batch_size=16))


@pytest.mark.parametrize("epochs, per_epoch, lengths", [
    (2, 10, [10, 10]), (3.5, 10, [10, 10, 10, 5]), (0.25, 8, [2]), (0.01, 10, [1]), (1.7, 3, [3, 2]),
])
def test_epoch_lengths_end_the_last_epoch_at_its_fraction(epochs, per_epoch, lengths):
    assert epoch_lengths(epochs, per_epoch) == lengths


def test_epochs_parse_and_validate_as_positive_numbers():
    assert epoch_count("3") == 3 and isinstance(epoch_count("3"), int) and epoch_count("0.5") == 0.5
    assert check_epochs(2.0) == 2 and isinstance(check_epochs(2.0), int)  # YAML's 2.0 is 2 epochs
    for config in (TrainConfig, SearchConfig):
        assert config(epochs=1.5).validate() is None
        for bad in (0, -1, float("nan"), True, "2"):
            with pytest.raises(TasError, match="^--epochs must be a positive number"):
                config(epochs=bad).validate()


def test_distill_for_one_and_a_half_epochs(tmp_path):
    """7 batches an epoch: 7 + round(3.5) = 11 updates, and the cosine schedule reaches its floor
    at the last of them (a schedule two epochs long would still be at 0.0055)."""
    model = tas.create_model("cifar_resnet20", num_classes=4, in_chans=1)
    slim = tas.materialize(model, tas.create_supernet(model, input_size=(1, 16, 16)).random_arch())
    steps = []
    slim.register_forward_pre_hook(lambda m, args: steps.append(1) if m.training else None)
    train, val = _loaders(batches=7)
    run = tmp_path / "slim"
    metrics = tas.distill(slim, model, train, val, epochs=1.5, output=run, warmup_epochs=0, lr=0.05, **QUIET)
    assert len(steps) == 11
    state = load_state(run)
    assert state["num_updates"] == 11 and [h["epoch"] for h in state["history"]] == [1, 2]
    assert state["history"][-1]["lr"] < 1e-3
    assert metrics["epochs"] == 1.5 and json.loads((run / "metrics.json").read_text())["epochs"] == 1.5
    # Its second epoch's other half was never drawn: extending it would skip those batches.
    with pytest.raises(CheckpointError, match=r"ended partway through an epoch \(--epochs 1.5\)"):
        tas.distill(slim, model, train, val, epochs=2, output=run, resume=True, **QUIET)


def test_search_for_half_an_epoch(tmp_path):
    model = tas.create_model("cifar_resnet20", num_classes=4, in_chans=1)
    train, val = _loaders(batches=4)
    run = tmp_path / "search"
    result = tas.search(model, train, val, flops_ratio=0.5, epochs=0.5, output=run, landing_steps=0, **QUIET)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["epochs"] == 0.5
    assert [h["epoch"] for h in result.history] == [1]
    with pytest.raises(CheckpointError, match="ended partway through an epoch"):
        tas.search(model, train, val, flops_ratio=0.5, epochs=1, output=run, resume=True, **QUIET)


def test_cli_refuses_bad_epochs_and_fractions_for_a_fine_tuning_baseline(tmp_path, capsys, search_script,
                                                                          teacher_run):
    base = ["--teacher", str(teacher_run), "--device", "cpu", "--no-progress", "--output", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as e:  # argparse: usage and exit 2
        search_script.main([*base, "--epochs", "half"])
    assert e.value.code == 2 and "--epochs: not a number: 'half'" in capsys.readouterr().err
    assert run_main(search_script.main, [*base, "--epochs", "0"]) == 2
    assert "--epochs must be a positive number" in capsys.readouterr().err
    assert run_main(search_script.main, [*base, "--method", "plasticity", "--epochs", "0.5"]) == 2
    assert "fine-tunes whole epochs" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
