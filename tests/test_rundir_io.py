"""Run-directory I/O contract: file modes, I/O faults, and one writer per run directory."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch.nn as nn

from tas.checkpoint import atomic_write_json, save_state
from tas.rundir import save_run

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
