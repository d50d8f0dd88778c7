"""Run-directory I/O: atomic writes, safetensors weights, JSON specs, resumable state. No pickle.

Every artefact is written to a temporary file in the same directory and renamed into place, so a
crash leaves either the old file or the new one, never half of one. Weights are safetensors;
everything else is JSON. Training state (optimizer, scheduler, RNG) is split into a safetensors
file of tensors plus a JSON skeleton that points at them, so nothing on disk can carry code.

The run directory contract, shared by train.py and search.py::

    run/
      config.json         everything needed to rebuild the model (timm name, kwargs, arch)
      model.safetensors   weights (search writes supernet.safetensors as well)
      metrics.json        final metrics
      state/              resumable state: state.json + state.safetensors
      events.out.tfevents.*  TensorBoard
"""
from __future__ import annotations

import json
import os
import random
import tempfile
import uuid
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, RunIOError, io_error_message, run_io_error

__all__ = [
    "atomic_write_bytes", "atomic_write_json", "read_json", "save_weights", "load_weights",
    "save_state", "load_state", "has_state", "rng_state", "set_rng_state", "check_extension",
]

STATE_DIR = "state"


#: where Linux reports the process's umask (``Umask:`` line, since 4.7)
_PROC_STATUS = "/proc/self/status"


def _umask() -> int:
    """The process's umask: the ``Umask:`` line of :data:`_PROC_STATUS` where there is one, else
    by setting it and putting it back (POSIX has no getter; that briefly changes it for every
    thread, so it is only the fallback)."""
    try:
        with open(_PROC_STATUS) as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_replace(path: Path, write: Any) -> None:
    """Write ``path`` through ``write(tmp)`` + rename; an I/O fault raises :class:`RunIOError`
    naming ``path``, with the temp file removed and the previous ``path`` untouched."""
    try:
        _atomic_replace_unchecked(path, write)
    except OSError as e:
        err = run_io_error(e, path, "write")
        if err is None:
            raise
        raise err from None
    except SafetensorError as e:
        # safetensors wraps an OSError into its message: ``... I/O error: No space left on device``
        if "I/O error" not in str(e):
            raise
        raise RunIOError(io_error_message(path, OSError(str(e).split("I/O error:", 1)[1].strip()))) from None


def _atomic_replace_unchecked(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates 0600 (and safetensors replaces the file with another 0600 one); the mode
        # survives the rename. Give the file the mode a plain open() would, so a run on shared
        # storage is as readable as any other file there.
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + rename)."""
    _atomic_replace(Path(path), lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: str | os.PathLike, what: str = "JSON file") -> dict:
    """Read a JSON object, turning a missing or malformed file into a one-line :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{what} {path} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} {path} must hold a JSON object, got {type(obj).__name__}")
    return obj


def save_weights(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, str] | None = None) -> None:
    """Save tensors to a safetensors file atomically (tensors are made contiguous and detached)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    _atomic_replace(Path(path), lambda tmp: save_file(tensors, tmp, metadata=dict(metadata or {})))


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing, truncated or non-safetensors file raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from None


def _flatten(obj: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """JSON skeleton of ``obj`` with every tensor moved into ``tensors`` under a path-like key."""
    if isinstance(obj, torch.Tensor):
        key = prefix or "_"
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, Mapping):
        items = [[_flatten(k, tensors, f"{prefix}.k{i}"), _flatten(v, tensors, f"{prefix}.{i}")]
                 for i, (k, v) in enumerate(obj.items())]
        return {"__dict__": items}
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_flatten(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a training state")


def _unflatten(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
        if "__dict__" in obj:
            return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_state(run_dir: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Save a resumable state (nested dicts/lists/tuples of tensors, numbers, strings) atomically.

    Tensors go to ``state/state.safetensors`` and the structure to ``state/state.json``. The JSON
    is written last and names a tensor file that is already complete, so a crash at any moment
    leaves the previous consistent state or the new one.
    """
    d = Path(run_dir) / STATE_DIR
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(dict(state), tensors, "s")
    # A fresh file name per save: the JSON always points at a complete tensor file.
    name = f"state-{uuid.uuid4().hex[:12]}.safetensors"
    save_weights(d / name, tensors)
    atomic_write_json(d / "state.json", {"tensors": name, "state": skeleton})
    for old in d.glob("state-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def has_state(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds a resumable state."""
    return (Path(run_dir) / STATE_DIR / "state.json").is_file()


def load_state(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Load what :func:`save_state` wrote; a missing or inconsistent state raises :class:`CheckpointError`."""
    d = Path(run_dir) / STATE_DIR
    if not has_state(run_dir):
        raise CheckpointError(f"--resume: no resumable state in {run_dir} (expected {d / 'state.json'})")
    meta = read_json(d / "state.json", "resume state")
    try:
        tensors = load_weights(d / meta["tensors"])
        return _unflatten(meta["state"], tensors)
    except KeyError as e:
        raise CheckpointError(f"resume state in {d} is inconsistent (missing {e})") from None


def check_extension(state: Mapping[str, Any], epochs: float, run_dir: str | os.PathLike) -> None:
    """Refuse to resume a run that ended partway through an epoch (``--epochs 3.5``; its state says
    so under ``ended_partway``) for more epochs: the rest of that epoch's batches were never drawn,
    and the epoch counter says it is done, so continuing would skip them."""
    ended = state.get("ended_partway")
    if ended is not None and epochs > float(ended):
        raise CheckpointError(f"--resume: the run in {run_dir} ended partway through an epoch (--epochs {ended}) "
                              f"and cannot be extended to --epochs {epochs}; resume with --epochs {ended} or "
                              "start over (--overwrite)")


def rng_state() -> dict[str, Any]:
    """The python, numpy and torch RNG states, storable by :func:`save_state`."""
    np_state = np.random.get_state()
    return {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": {"keys": np_state[1], "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
