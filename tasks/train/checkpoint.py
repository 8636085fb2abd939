"""Training checkpoints: one step-stamped folder per save, written so that a crash never leaves a
checkpoint that looks complete but is not.

Layout of `<root>/step-000123/`:

    model.safetensors   the model's parameters and buffers (safetensors: no pickle, mmap-able,
                        readable by transformers; tied weights are stored once)
    extra.safetensors   optional training-only modules (e.g. multi-token-prediction heads), kept
                        apart so the model file is the model alone
    optimizer.pt        the optimizer's state_dict
    rng.pt              python, numpy and torch (and cuda / mps) random states
    state.json          where training is: step, stage, data position, rollbacks, lr scale,
                        running loss (`TrainState`)
    GOOD                present once the checkpoint's loss was verified (`mark_good`); rollback
                        returns to the newest such checkpoint

Atomicity (`smolforge.artifacts.atomic_folder`): everything is written into a hidden temporary
folder beside the final one, each file
and the folder are fsynced, then the folder is renamed into place (a rename within one file system
is atomic) and the parent folder is fsynced so the rename itself survives a power cut. Readers only
consider `step-<digits>` folders holding a state.json, so a crash at any point leaves either the
complete checkpoint or no visible one; leftovers of interrupted writes are removed by the next save.
Removal goes the other way: rename out of sight first, then delete.

Files are loaded with `torch.load(weights_only=True)`: a checkpoint cannot run code when read.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from smolforge.artifacts import atomic_folder, fsync_path

MODEL = "model.safetensors"
EXTRA = "extra.safetensors"
OPTIMIZER = "optimizer.pt"
RNG = "rng.pt"
STATE = "state.json"
GOOD = "GOOD"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")
_HIDDEN_PREFIXES = (".tmp-", ".old-", ".trash-")


@dataclass
class TrainState:
    """Where training is, beside the weights. Everything needed to continue exactly, since the data
    order and the learning rate are functions of these numbers (see `data` and `schedule`)."""

    step: int = 0  # optimizer steps done over the whole run: the global step of the next update
    stage: str = ""  # stage the next update belongs to
    stage_step: int = 0  # optimizer steps done within that stage
    data_step: int = 0  # the stage's data position: the step whose batches come next (> stage_step after skips)
    tokens: int = 0  # training tokens consumed so far
    rollbacks: int = 0  # rollbacks done so far
    lr_scale: float = 1.0  # product of the lr backoffs applied by rollbacks
    running_loss: float | None = None  # moving average of the training loss (spike detection)
    running_loss_steps: int = 0  # losses that fed the moving average
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # anything else JSON-serialisable the trainer wants back

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainState:
        data = dict(data)
        version = data.pop("format", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(f"checkpoint state format {version} is not supported (expected {FORMAT_VERSION})")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"checkpoint state has unknown fields {unknown}")
        return cls(**data)


# --- files and folders -----------------------------------------------------------------------------




def _remove(path: Path) -> None:
    """Delete a folder so that it stops looking like a checkpoint at once, even if interrupted."""
    trash = path.with_name(f".trash-{path.name}-{uuid.uuid4().hex[:8]}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def step_of(path: str | Path) -> int:
    match = _STEP_DIR.match(Path(path).name)
    if not match:
        raise ValueError(f"{path} is not a checkpoint folder (step-<digits>)")
    return int(match.group(1))


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / STATE).is_file()]
    return sorted(found, key=step_of)


def latest(root: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def is_good(path: str | Path) -> bool:
    return (Path(path) / GOOD).is_file()


def last_good(root: str | Path) -> Path | None:
    """The newest checkpoint marked good: where a rollback returns to."""
    good = [p for p in list_checkpoints(root) if is_good(p)]
    return good[-1] if good else None


def mark_good(path: str | Path, **info: Any) -> None:
    """Mark a checkpoint as a safe rollback target, once the loss after it was seen to be healthy.

    Saving cannot know that: a checkpoint written just as a spike starts holds weights already on
    the way up. The trainer marks a checkpoint good after later steps passed the spike check.
    `info` (e.g. the loss that vouched for it) is stored in the marker for the record.
    """
    path = Path(path)
    if not (path / STATE).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint")
    tmp = path / f".{GOOD}.{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps({"time": time.time(), **info}, default=str) + "\n", encoding="utf-8")
    fsync_path(tmp)
    os.replace(tmp, path / GOOD)
    fsync_path(path)


def read_state(path: str | Path) -> TrainState:
    return TrainState.from_dict(json.loads((Path(path) / STATE).read_text(encoding="utf-8")))


def _clean_leftovers(root: Path) -> None:
    """Remove temporary and half-deleted folders left by interrupted saves or prunes.

    Assumes one writer per checkpoint root, which a training run is.
    """
    for p in root.iterdir():
        if p.name.startswith(_HIDDEN_PREFIXES) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def prune(root: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints, always sparing the newest good one (otherwise a
    run of unverified saves would delete the only rollback target). Returns what was removed."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1; got {keep}")
    found = list_checkpoints(root)
    spared = set(found[-keep:])
    good = last_good(root)
    if good is not None:
        spared.add(good)
    removed = [p for p in found if p not in spared]
    for p in removed:
        _remove(p)
    return removed


def remove_after(root: str | Path, step: int) -> list[Path]:
    """Delete the checkpoints newer than `step`: after a rollback to `step` they hold the run that
    spiked, and a later resume must not pick them up. Save soon after, or a crash before the next
    save resumes from `step` without the rollback's bookkeeping."""
    removed = [p for p in list_checkpoints(root) if step_of(p) > step]
    for p in removed:
        _remove(p)
    return removed


# --- random states -----------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every random generator training draws from, as tensors and plain values (loadable with
    weights_only=True)."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if torch.backends.mps.is_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what `rng_state` captured. Device generators are restored only where the device is
    present with the same count (a GPU run resumed on CPU keeps the CPU generators exact)."""
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and torch.cuda.device_count() == len(state["cuda"]):
        torch.cuda.set_rng_state_all(state["cuda"])
    if "mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])


def _as_tuple(value: Any) -> Any:
    """random.setstate needs tuples all the way down; a round trip may hand back lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


# --- save and load ---------------------------------------------------------------------------------


def save(
    root: str | Path,
    state: TrainState,
    model: torch.nn.Module,
    optimizer: Any | None = None,
    extra: torch.nn.Module | Mapping[str, torch.Tensor] | None = None,
    *,
    keep: int | None = None,
) -> Path:
    """Write checkpoint `step-<state.step>` under `root` atomically and return its folder.

    `optimizer`: anything with `state_dict()` (a torch optimizer, or a wrapper over several).
    `extra`: a module or a dict of tensors saved to extra.safetensors. An existing checkpoint of
    the same step (a step reached again after a rollback) is replaced. With `keep`, older
    checkpoints are pruned afterwards (see `prune`).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(root)
    final = root / checkpoint_name(state.step)
    # An existing checkpoint of this step is replaced whole; meanwhile `latest` sees it or the new one.
    with atomic_folder(final) as tmp:
        meta = {"step": str(state.step), "stage": state.stage}
        # force_contiguous: a transposed view (e.g. some tied or reshaped weight) is stored as its values
        save_model(model, str(tmp / MODEL), metadata=meta, force_contiguous=True)
        if isinstance(extra, torch.nn.Module):
            save_model(extra, str(tmp / EXTRA), metadata=meta, force_contiguous=True)
        elif extra is not None:
            save_file({k: v.detach().contiguous() for k, v in extra.items()}, str(tmp / EXTRA), metadata=meta)
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER)
        torch.save(rng_state(), tmp / RNG)
        (tmp / STATE).write_text(json.dumps(state.to_dict(), indent=2) + "\n", encoding="utf-8")
    if keep is not None:
        prune(root, keep)
    return final


def load(
    path: str | Path,
    model: torch.nn.Module | None = None,
    optimizer: Any | None = None,
    extra: torch.nn.Module | None = None,
    *,
    restore_rng: bool = True,
    map_location: str | torch.device = "cpu",
    strict: bool = True,
) -> TrainState:
    """Restore a checkpoint folder into the given objects (each optional) and return its state.

    Parameters are copied into `model` (and `extra`) in place, so they keep their device and
    dtype; `strict` refuses missing or unexpected names. The optimizer must be built over the
    same parameters, in the same order, as the saved one. Asking for a part the checkpoint lacks
    is an error rather than a silent fresh start.
    """
    path = Path(path)
    if not (path / STATE).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {STATE})")
    state = read_state(path)
    if model is not None:
        load_model(model, str(path / MODEL), strict=strict)
    if extra is not None:
        if not (path / EXTRA).is_file():
            raise FileNotFoundError(f"{path} holds no {EXTRA} to restore the extra modules from")
        load_model(extra, str(path / EXTRA), strict=strict)
    if optimizer is not None:
        if not (path / OPTIMIZER).is_file():
            raise FileNotFoundError(f"{path} holds no optimizer state")
        optimizer.load_state_dict(torch.load(path / OPTIMIZER, map_location=map_location, weights_only=True))
    if restore_rng:
        set_rng_state(torch.load(path / RNG, weights_only=True))
    return state


def load_extra_tensors(path: str | Path) -> dict[str, torch.Tensor] | None:
    """The extra tensors as a dict (when they were saved from a dict), or None if there are none."""
    file = Path(path) / EXTRA
    return load_file(str(file)) if file.is_file() else None
