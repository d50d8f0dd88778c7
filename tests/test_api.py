"""The Python API (tas.search / tas.distill / tas.export_onnx) on a user's model and loaders, its
agreement with search.py, ``--dataset module:function``, and the console commands."""
import json
import re
import tempfile
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import tas
from tas.cli import run_main
from tas.prune.flops import count_flops

REPO = Path(__file__).resolve().parents[1]
QUIET = {"progress": False, "device": "cpu", "log_every": 1}


def _loaders(n: int = 48, classes: int = 4, size: int = 16, seed: int = 0):
    """Plain TensorDataset loaders of random 1-channel images: (train, val)."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(2 * n, 1, size, size, generator=g), torch.randint(0, classes, (2 * n,), generator=g)
    return (DataLoader(TensorDataset(x[:n], y[:n]), batch_size=16, shuffle=True),
            DataLoader(TensorDataset(x[n:], y[n:]), batch_size=16))


def test_search_api_on_a_user_model_and_tensor_loaders(tmp_path):
    model = tas.create_model("cifar_resnet20", num_classes=4, in_chans=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train, val = _loaders()
    run = tmp_path / "run"
    result = tas.search(model, train, val, flops_ratio=0.3, epochs=1, output=run, **QUIET)

    assert isinstance(result.arch, tas.Arch) and result.run_dir == run
    # The budget, counted on the slim network itself against the untouched original.
    full, slim = count_flops(model, (1, 16, 16)), count_flops(result.slim, (1, 16, 16))
    assert 0.25 <= slim / full <= 0.3
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert [h["epoch"] for h in result.history] == [1]
    # The run directory the CLI writes, describing the same network.
    assert json.loads((run / "arch.json").read_text())["groups"] == result.arch.to_dict()["groups"]
    assert json.loads((run / "metrics.json").read_text())["flops"] == slim
    assert (run / "state" / "state.json").is_file() and list(run.glob("events.out.tfevents.*"))
    assert not (run / ".tas-lock").exists()  # held while the search ran, released after
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(tas.load_slim(run)(x), result.slim.eval()(x), atol=1e-5)


def test_search_api_without_output_writes_nothing_and_refuses_data_flags(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = tas.create_model("cifar_resnet20", num_classes=4, in_chans=1)
    train, val = _loaders(n=32)
    with pytest.raises(TypeError, match="batch_size"):
        tas.search(model, train, val, batch_size=8)
    with pytest.raises(TypeError, match="arch_lrr"):
        tas.search(model, train, val, arch_lrr=0.1)
    with pytest.raises(tas.TasError, match="resume needs an output"):
        tas.search(model, train, val, resume=True, **QUIET)
    from tas.io.rundir import run_lock

    with run_lock(tmp_path / "busy"), pytest.raises(tas.TasError, match="being written by another run"):
        tas.search(model, train, val, output=tmp_path / "busy", **QUIET)  # the commands' writer lock
    temp = set(Path(tempfile.gettempdir()).glob("tas-search-*"))
    result = tas.search(model, train, val, epochs=1, selection="sapp", **QUIET)
    assert result.run_dir is None and list(tmp_path.iterdir()) == []
    assert set(Path(tempfile.gettempdir()).glob("tas-search-*")) == temp
    assert result.supernet.selection == "sapp"  # options reach the search by their flag names


def test_search_api_resumes_its_run_directory(tmp_path):
    model = tas.create_model("cifar_resnet20", num_classes=4, in_chans=1)
    train, val = _loaders(n=32)
    run = tmp_path / "run"
    tas.search(model, train, val, epochs=1, output=run, **QUIET)
    with pytest.raises(tas.TasError, match="already holds a search"):
        tas.search(model, train, val, epochs=2, output=run, **QUIET)
    result = tas.search(model, train, val, epochs=2, output=run, resume=True, **QUIET)
    assert [h["epoch"] for h in result.history] == [1, 2] and result.metrics["steps"] == 2 * len(train)
    assert json.loads((run / "arch_history.json").read_text()) == json.loads(json.dumps(result.history))

def test_search_api_and_search_py_write_the_same_arch(tmp_path, search_script, teacher_run):
    from tas.data import create_loaders
    from tas.prune.load import load_run

    flags = {"flops_ratio": 0.5, "epochs": 1, "seed": 3, "arch_lr": 0.1}
    cli = tmp_path / "cli"
    argv = ["--teacher", str(teacher_run), "--dataset", "digits", "--limit", "128", "--batch-size", "32",
            "--no-progress", "--device", "cpu", "--output", str(cli)]
    for k, v in flags.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    assert search_script.main(argv) == 0

    teacher, _ = load_run(teacher_run)
    loaders = create_loaders("digits", batch_size=32, seed=3, img_size=16, search_split=True, limit=128)
    api = tmp_path / "api"
    tas.search(teacher, loaders["train"], loaders["val"], test_loader=loaders["test"], output=api,
               dataset="digits", progress=False, device="cpu", **flags)

    def spec(run):
        d = json.loads((run / "arch.json").read_text())
        d.pop("created", None)
        d["meta"].pop("teacher")  # where the teacher came from: a run directory, or a model in memory
        return d

    assert spec(cli) == spec(api)
    assert spec(api)["meta"]["seed"] == 3  # the settings reached both



def test_distill_api_trains_the_slim_in_place_and_writes_a_loadable_run(tmp_path):
    model = tas.create_model("cifar_resnet20", num_classes=4, in_chans=1)
    arch = tas.create_supernet(model, input_size=(1, 16, 16)).random_arch()
    slim = tas.materialize(model, arch)
    before = {k: v.clone() for k, v in slim.state_dict().items()}
    train, val = _loaders(n=32)
    with pytest.raises(TypeError, match="batch_size"):
        tas.distill(slim, model, train, val, batch_size=8)
    with pytest.raises(tas.TasError, match="give arch="):
        tas.distill(tas.create_model("cifar_resnet20", num_classes=4, in_chans=1), model, train, val)
    run = tmp_path / "slim"
    metrics = tas.distill(slim, model, train, val, epochs=1, output=run, kd_alpha=0.5, **QUIET)
    assert any(not torch.equal(v, before[k]) for k, v in slim.state_dict().items() if v.is_floating_point())
    config = json.loads((run / "config.json").read_text())
    assert config["arch"]["groups"] == arch.to_dict()["groups"] and config["kd"]["alpha"] == 0.5
    assert metrics["flops"] == count_flops(slim, (1, 16, 16)) == arch.flops and "teacher_top1" in metrics
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(tas.load_slim(run)(x), slim.eval()(x), atol=1e-5)

# ---- --dataset module:function --------------------------------------------------------------------
MYDATA = """
import torch
from torch.utils.data import TensorDataset
from tas.data import DatasetInfo

CALLS = []

def load():
    CALLS.append(1)
    with open("calls.txt", "a") as f:
        f.write("call\\n")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 1, 16, 16, generator=g), torch.arange(96) % 8  # 8 of each class in train
    return TensorDataset(x[:64], y[:64]), TensorDataset(x[64:], y[64:]), DatasetInfo("mine", 10, 1, 16, (0.0,), (1.0,))

def wrong():
    return [1, 2]
"""


def test_dataset_module_function_feeds_search(tmp_path, monkeypatch, search_script, teacher_run):
    (tmp_path / "tas_test_mydata.py").write_text(MYDATA)
    monkeypatch.chdir(tmp_path)  # found from the working directory, as a user's module would be
    out = tmp_path / "run"
    assert search_script.main(["--teacher", str(teacher_run), "--dataset", "tas_test_mydata:load", "--epochs", "1",
                               "--batch-size", "16", "--no-progress", "--device", "cpu", "--output", str(out)]) == 0
    assert (tmp_path / "calls.txt").read_text() == "call\n"  # one call gave both splits
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == "tas_test_mydata:load"
    # The weight half of the user's 64 training images (4 of each class), batches of 16: their data.
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2


@pytest.mark.parametrize("spec,message", [
    ("tas_test_nosuchmodule:load", "cannot import tas_test_nosuchmodule"),
    ("tas_test_mydata2:missing", "tas_test_mydata2 has no function missing"),
    ("tas_test_mydata2:wrong", "must return (train_dataset, test_dataset, tas.data.DatasetInfo), got list"),
    ("tas_test_mydata2:", "expected module:function"),
    ("nofile.py:load", "no such file nofile.py"),
])
def test_dataset_bad_spec_exits_2(tmp_path, monkeypatch, capsys, search_script, teacher_run, spec, message):
    (tmp_path / "tas_test_mydata2.py").write_text(MYDATA)
    monkeypatch.chdir(tmp_path)
    rc = run_main(search_script.main, ["--teacher", str(teacher_run), "--dataset", spec, "--device", "cpu",
                                       "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.startswith("error: --dataset"), err
    assert not (tmp_path / "o").exists()


# ---- console commands -----------------------------------------------------------------------------
def test_tas_command_version_and_subcommand_help(capsys):
    from tas.commands import COMMANDS, main

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"tas {tas.__version__}"
    version = re.search(r'^version = "(.+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert version is None  # pyproject reads the version from tas.__version__, its one home
    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0 and capsys.readouterr().out.startswith(f"usage: tas {name}")
    assert main(["search", "--teacher", "/nonexistent", "--device", "cpu"]) == 2
    assert "error:" in capsys.readouterr().err


def test_readme_first_screen_is_setup_then_api():
    text = (REPO / "README.md").read_text()
    first = text.split("\n## ")[0]
    assert re.search(r"```bash\n(.+\n){2}```", first), "two set-up commands"
    code = re.search(r"```python\n(.*?)```", first, re.S)
    assert code and len(code.group(1).strip().splitlines()) <= 10
    assert "tas.search(" in code.group(1)


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text.split("\n## ")[0], re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "runs" / "search" / "arch.json").is_file() and (tmp_path / "slim.onnx").is_file()
