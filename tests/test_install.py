"""CI proves the install: a wheel built from this checkout, installed non-editable into a fresh
directory, finds every preset and runs ``tas-search`` on digits from outside the checkout."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("tas", "tas-train", "tas-search", "tas-export", "tas-latency", "tas-demo")


def _pip(*args: str, cwd: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "pip", "-q", *args], cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_wheel_installs_and_runs_from_another_directory(tmp_path, teacher_run):
    # Built from a copy, so a stale build/ or egg-info in the checkout cannot leak into the wheel.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", "build", "runs", "*.egg-info", "__pycache__", ".pytest_cache", "tests", "benchmarks"))
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp_path / "wheel"), str(src),
         cwd=tmp_path)
    (wheel,) = (tmp_path / "wheel").glob("tas-*.whl")
    target = tmp_path / "target"
    _pip("install", "--no-deps", "--no-index", "--target", str(target), str(wheel), cwd=tmp_path)
    assert all((target / "bin" / c).is_file() for c in COMMANDS)
    shutil.rmtree(src)  # nothing of the checkout is left to fall back on but the installed package

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    presets = sorted(p.stem for p in (REPO / "search_spaces").glob("*.yaml"))
    check = ("import importlib.metadata, tas; from tas.nas.space import list_spaces; "
             "print(tas.__file__); print(tas.__version__, importlib.metadata.version('tas')); "
             "print(' '.join(list_spaces())); [tas.load_space(n) for n in list_spaces()]")
    r = subprocess.run([sys.executable, "-c", check], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    path, versions, names = r.stdout.splitlines()[-3:]
    assert Path(path).is_relative_to(target)
    assert versions.split() == [versions.split()[0]] * 2
    assert names.split() == presets and len(presets) >= 4

    out = elsewhere / "runs" / "search"
    r = subprocess.run([str(target / "bin" / "tas-search"), "--teacher", str(teacher_run), "--dataset", "digits",
                        "--limit", "64", "--batch-size", "32", "--epochs", "1", "--no-progress", "--device", "cpu",
                        "--output", "runs/search"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    arch = json.loads((out / "arch.json").read_text())
    assert arch["model"] == "cifar_resnet20" and arch["meta"]["space"]["name"] == "cifar_resnet"
