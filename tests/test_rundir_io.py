"""Run-directory I/O contract: file modes, I/O faults, and one writer per run directory."""
from __future__ import annotations

import errno
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from tas.io.checkpoint import atomic_write_json, save_state
from tas.errors import EXIT_IO, RunIOError, TasError
from tas.io.rundir import LOCK_NAME, run_lock, save_run

REPO = Path(__file__).resolve().parents[1]
KWARGS = {"num_classes": 2, "in_chans": 1}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_written_files_honour_the_umask(tmp_path, umask):
    """arch/config/metrics/weights get the mode a plain ``open()`` gives under the same umask."""
    old = os.umask(umask)
    try:
        run = tmp_path / "run"
        paths = save_run(run, nn.Linear(2, 2), model_name="linear", model_kwargs=KWARGS, input_size=[1, 1, 2],
                         metrics={"top1": 50.0})
        atomic_write_json(run / "arch.json", {"model": "linear"})
        save_state(run, {"epoch": 1})
        plain = tmp_path / "plain.txt"
        with open(plain, "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    assert _mode(plain) == 0o666 & ~umask  # the independent expectation, from the OS itself
    written = [*paths.values(), run / "arch.json", *(run / "state").iterdir()]
    assert len(written) == 6
    for path in written:
        assert _mode(path) == _mode(plain), f"{path.name}: {oct(_mode(path))}"


# ---------------------------------------------------------------------------------------------
# I/O faults: one error line, exit 74, the last good checkpoint kept
# ---------------------------------------------------------------------------------------------
FAST = ["--model", "cifar_resnet20", "--dataset", "digits", "--img-size", "16", "--limit", "128",
        "--batch-size", "16", "--epochs", "1", "--no-progress", "--device", "cpu", "--checkpoint-every", "3"]


def _full_disk_after(monkeypatch, good_saves: int, only: str = ""):
    """Make the safetensors writer fail with ENOSPC once ``good_saves`` saves (of files whose temp
    name contains ``only``) have gone through."""
    from tas.io import checkpoint

    real, calls = checkpoint.save_file, {"n": 0}

    def save_file(tensors, path, metadata=None):
        if only in str(path):
            calls["n"] += 1
            if calls["n"] > good_saves:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", save_file)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _temp_files(run: Path) -> list[Path]:
    return [p for p in run.rglob("*") if p.name.endswith(".tmp")]


def test_full_disk_mid_run_exits_74_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, train_script, capsys):
    from tas.io.checkpoint import load_state
    from tas.cli import run_main

    _full_disk_after(monkeypatch, good_saves=1)  # the step-3 state is saved, the step-6 one hits a full disk
    out = tmp_path / "run"
    assert run_main(train_script.main, [*FAST, "--output", str(out)]) == EXIT_IO == 74
    line = _one_error_line(capsys.readouterr().err)
    assert f"{out / 'state'}/state-" in line and "No space left on device" in line
    assert load_state(out)["step_in_epoch"] == 3
    assert not _temp_files(out) and not (out / "model.safetensors").exists()


def test_full_disk_on_the_final_weights_keeps_the_previous_run(tmp_path, monkeypatch, train_script, capsys):
    from tas.cli import run_main

    out = tmp_path / "run"
    assert train_script.main([*FAST, "--output", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    _full_disk_after(monkeypatch, good_saves=0, only=".model.safetensors.")
    assert run_main(train_script.main, [*FAST, "--output", str(out), "--overwrite", "--seed", "1"]) == 74
    line = _one_error_line(capsys.readouterr().err)
    assert line == f"error: cannot write {out / 'model.safetensors'}: No space left on device"
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.startswith("events.")}
    assert after == {k: v for k, v in before.items() if not k.startswith("events.")}
    assert not _temp_files(out)


def test_safetensors_wrapped_io_error_is_an_io_fault(tmp_path, monkeypatch):
    """safetensors reports a real full disk as ``SafetensorError(... I/O error: ...)``, not OSError."""
    from safetensors import SafetensorError

    from tas.io import checkpoint

    def full(tensors, path, metadata=None):
        Path(path).write_bytes(b"half")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(RunIOError, match=r"cannot write .*w\.safetensors: No space left on device"):
        checkpoint.save_weights(tmp_path / "w.safetensors", {"a": torch.ones(2)})
    assert list(tmp_path.iterdir()) == []


def _read_only(monkeypatch, root: Path) -> None:
    """Simulate a read-only file system at ``root`` (tests run as root, where chmod blocks nothing)."""
    real_open, real_mkdir = os.open, os.mkdir
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def refuse(path) -> None:
        if str(Path(path).absolute()).startswith(str(root)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def open_(path, flags, *args, **kwargs):
        if flags & writes:
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        refuse(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "mkdir", mkdir)


@pytest.mark.parametrize("existing", [False, True])
def test_read_only_output_exits_74_naming_it(tmp_path, monkeypatch, train_script, search_script, teacher_run,
                                             capsys, existing):
    from tas.cli import run_main

    ro = tmp_path / "ro"
    ro.mkdir()
    out = ro / "run"
    if existing:
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"a finished run")
    _read_only(monkeypatch, ro)
    assert run_main(train_script.main, [*FAST, "--output", str(out), "--overwrite"]) == 74
    line = _one_error_line(capsys.readouterr().err)
    assert str(out) in line and "Read-only file system" in line
    assert run_main(search_script.main, ["--teacher", str(teacher_run), "--output", str(out), "--overwrite",
                                         "--no-progress", "--device", "cpu"]) == 74
    assert "Read-only file system" in _one_error_line(capsys.readouterr().err)
    monkeypatch.undo()
    assert sorted(p.name for p in ro.rglob("*")) == (["model.safetensors", "run"] if existing else [])


# ---------------------------------------------------------------------------------------------
# one writer per run directory
# ---------------------------------------------------------------------------------------------
# Another process holding the lock as run_lock does (an flock on the lock file, which names the
# holder); it imports nothing of tas, so it starts in milliseconds.
_HOLDER = """
import fcntl, json, os, socket, sys, time
os.makedirs(sys.argv[1], exist_ok=True)
fd = os.open(os.path.join(sys.argv[1], sys.argv[2]), os.O_RDWR | os.O_CREAT, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def held_lock(tmp_path):
    """A second, real process holding the lock of ``tmp_path / "run"``: ``(run, process)``."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run), LOCK_NAME], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield run, proc
    finally:
        proc.kill()
        proc.wait()


def test_second_writer_is_refused_naming_pid_and_host(held_lock, train_script, search_script, teacher_run, capsys):
    from tas.cli import run_main
    from tas.pipeline import main as pipeline_main

    run, holder = held_lock
    for main, flags in ((train_script.main, [*FAST, "--overwrite"]),
                        (search_script.main, ["--teacher", str(teacher_run), "--overwrite", "--no-progress"]),
                        (search_script.main, ["--teacher", str(teacher_run), "--method", "l1", "--overwrite"]),
                        (pipeline_main, ["--no-progress"])):
        assert run_main(main, [*flags, "--output", str(run)]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert f"{run} is being written by another run: PID {holder.pid} on host {socket.gethostname()}" in line
    assert [p.name for p in run.iterdir()] == [LOCK_NAME]  # nothing written by the refused runs
    assert holder.poll() is None


def test_lock_of_a_killed_run_is_taken_over_and_released(held_lock, train_script, capsys):
    run, holder = held_lock
    holder.kill()  # like kill -9: the holder cannot release; the lock file still names it
    holder.wait()
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == holder.pid
    assert train_script.main([*FAST, "--output", str(run)]) == 0
    err = capsys.readouterr().err
    assert f"was locked by PID {holder.pid} on host {socket.gethostname()}" in err and "taking the lock over" in err
    assert (run / "model.safetensors").is_file() and not (run / LOCK_NAME).exists()


def test_lock_is_exclusive_within_one_process_and_reusable(tmp_path):
    run = tmp_path / "run"
    with run_lock(run) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
        with pytest.raises(TasError, match=f"PID {os.getpid()}"):
            with run_lock(run):
                pass
    assert not run.exists()  # created for a run that wrote nothing: removed again
    with run_lock(run):
        (run / "file").write_text("x")
    assert [p.name for p in run.iterdir()] == ["file"]
    with pytest.raises(TasError, match=f"{run / 'file'} is a file, not a directory"):
        with run_lock(run / "file" / "sub" / "run"):
            pass


# A run that forked a child (a DataLoader worker) while holding the lock, then died (kill -9): the
# child keeps the flock, the lock file names the dead parent. Prints the child's PID.
_FORKING_HOLDER = """
import fcntl, json, os, socket, sys, time
fd = os.open(os.path.join(sys.argv[1], sys.argv[2]), os.O_RDWR | os.O_CREAT, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
child = os.fork()
if child == 0:
    os.close(1), os.close(2)  # the test reads the parent's output to its end
    time.sleep(float(sys.argv[3]))
    os._exit(0)
print(os.getpid(), child, flush=True)
os._exit(0)
"""


def _orphaned_lock(run, child_s):
    run.mkdir()
    out = subprocess.run([sys.executable, "-c", _FORKING_HOLDER, str(run), LOCK_NAME, str(child_s)],
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), int(out[1])


def test_lock_held_by_a_dead_runs_children_is_waited_for_then_explained(tmp_path, monkeypatch, capsys):
    import signal

    import tas.io.rundir as rundir

    run = tmp_path / "run"
    parent, child = _orphaned_lock(run, 60)
    try:
        monkeypatch.setattr(rundir, "CHILD_WAIT_S", 0.3, raising=False)
        with pytest.raises(TasError, match=f"PID {parent} has ended but its child processes still hold the lock; "
                                           "retry in a few seconds"):
            with run_lock(run):
                pass
    finally:
        os.kill(child, signal.SIGKILL)
    # children that end within the wait: the lock is taken over, naming the dead run
    parent, child = _orphaned_lock(tmp_path / "run2", 0.5)
    monkeypatch.setattr(rundir, "CHILD_WAIT_S", 20.0, raising=False)
    with run_lock(tmp_path / "run2"):
        pass
    assert f"was locked by PID {parent}" in capsys.readouterr().err


def test_without_flock_a_lock_from_another_host_says_how_to_clear_it(tmp_path, monkeypatch):
    import errno

    import tas.io.rundir as rundir

    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(rundir.fcntl, "flock", no_flock)
    with pytest.raises(TasError, match=f"PID 1 on host elsewhere.*if that run is gone, delete {run / LOCK_NAME}"):
        with run_lock(run):
            pass


def test_umask_is_read_without_changing_it(tmp_path, monkeypatch):
    """Setting the umask to read it races with other threads creating files; /proc has it."""
    import tas.io.checkpoint as ckpt

    old = os.umask(0o027)
    try:
        changes = []
        real_umask = os.umask
        monkeypatch.setattr(ckpt.os, "umask", lambda m: changes.append(m) or real_umask(m))
        assert ckpt._umask() == 0o027 and changes == []
        monkeypatch.setattr(ckpt, "_PROC_STATUS", str(tmp_path / "missing"), raising=False)
        assert ckpt._umask() == 0o027 and changes  # the fallback where there is no /proc
    finally:
        os.umask(old)


def test_one_mapping_of_os_errors_to_run_io_errors():
    from tas.errors import RunIOError, run_io_error

    full = run_io_error(OSError(errno.ENOSPC, "No space left on device", "/x/model.safetensors"))
    assert isinstance(full, RunIOError) and str(full) == "cannot write /x/model.safetensors: No space left on device"
    denied = run_io_error(OSError(errno.EACCES, "Permission denied"), "/x", "create")
    assert str(denied) == "cannot create /x: Permission denied"
    assert str(run_io_error(OSError(errno.EACCES, "Permission denied", "/y"))) == "cannot access /y: Permission denied"
    assert run_io_error(OSError(errno.EBADF, "Bad file descriptor")) is None  # a bug, not the disk
    assert run_io_error(ValueError("x")) is None
