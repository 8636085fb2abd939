"""Checkpoints: a save/load round trip continues training exactly; a crash mid-write leaves no
visible checkpoint; pruning keeps the newest and the last good one."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from smolforge.tasks.train import checkpoint as ckpt
from smolforge.tasks.train.checkpoint import TrainState


class Tiny(torch.nn.Module):
    """Embedding tied to the output layer, a norm buffer and dropout: what a language model has."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(11, 8)
        self.mid = torch.nn.Linear(8, 8)
        self.out = torch.nn.Linear(8, 11, bias=False)
        self.out.weight = self.emb.weight
        self.drop = torch.nn.Dropout(0.5)
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, x):
        return self.out(self.drop(torch.tanh(self.mid(self.emb(x)))) * self.scale)


def train_step(model, opt, extra):
    x = torch.randint(0, 11, (4, 5))  # draws from the torch generator, as a data pipeline might
    loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten()) + extra(model.emb(x)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def make(seed=0):
    torch.manual_seed(seed)
    model, extra = Tiny(), torch.nn.Linear(8, 3)
    opt = torch.optim.AdamW([*model.parameters(), *extra.parameters()], lr=1e-2)
    return model, extra, opt


def draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_round_trip_continues_training_exactly(tmp_path):
    model, extra, opt = make()
    for _ in range(3):
        train_step(model, opt, extra)
    state = TrainState(step=3, stage="stable", stage_step=3, data_step=4, tokens=60, running_loss=2.5, extra={"note": "x"})
    path = ckpt.save(tmp_path, state, model, opt, extra)
    assert path.name == "step-000003" and ckpt.latest(tmp_path) == path
    assert sorted(p.name for p in path.iterdir()) == ["extra.safetensors", "model.safetensors", "optimizer.pt", "rng.pt", "state.json"]
    expected_draws = draws()
    expected_losses = [train_step(model, opt, extra) for _ in range(3)]
    expected_params = [p.detach().clone() for p in model.parameters()]

    model2, extra2, opt2 = make(seed=1)  # different weights, fresh optimizer, other random state
    train_step(model2, opt2, extra2)
    loaded = ckpt.load(path, model2, opt2, extra2)
    assert loaded == state
    assert model2.out.weight is model2.emb.weight  # tying survives
    assert draws() == expected_draws
    ckpt.load(path, model2, opt2, extra2)
    draws()  # as the first run did after saving
    assert [train_step(model2, opt2, extra2) for _ in range(3)] == expected_losses
    for a, b in zip(expected_params, model2.parameters()):
        assert torch.equal(a, b)


def test_load_refuses_mismatches_and_missing_parts(tmp_path):
    model, extra, opt = make()
    path = ckpt.save(tmp_path, TrainState(step=1), model)
    with pytest.raises(FileNotFoundError, match="no optimizer state"):
        ckpt.load(path, model, opt)
    with pytest.raises(FileNotFoundError, match="extra"):
        ckpt.load(path, model, extra=extra)
    with pytest.raises(RuntimeError):
        ckpt.load(path, torch.nn.Linear(8, 8))
    (path / "state.json").write_text('{"step": 1, "epoch": 2}')
    with pytest.raises(ValueError, match="unknown fields \\['epoch'\\]"):
        ckpt.read_state(path)
    assert ckpt.load_extra_tensors(path) is None
    p2 = ckpt.save(tmp_path, TrainState(step=2), model, extra={"mtp.w": torch.ones(2, 3).t()})
    assert torch.equal(ckpt.load_extra_tensors(p2)["mtp.w"], torch.ones(3, 2))


def test_failed_save_leaves_nothing_visible(tmp_path):
    model, _, _ = make()
    ckpt.save(tmp_path, TrainState(step=1), model)

    class Broken:
        def state_dict(self):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ckpt.save(tmp_path, TrainState(step=2), model, Broken())
    assert [p.name for p in tmp_path.iterdir()] == ["step-000001"]


def test_crash_mid_write_leaves_no_visible_checkpoint(tmp_path):
    """A process killed while writing (no exception handler runs) leaves only a hidden temp folder."""
    script = textwrap.dedent(
        f"""
        import os, torch
        from smolforge.tasks.train import checkpoint as ckpt
        model = torch.nn.Linear(4, 4)
        ckpt.save({str(tmp_path)!r}, ckpt.TrainState(step=1), model)

        class Dies:
            def state_dict(self):
                os._exit(3)  # the model file is written by now; the process vanishes mid-save

        ckpt.save({str(tmp_path)!r}, ckpt.TrainState(step=2), model, Dies())
        """
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    assert subprocess.run([sys.executable, "-c", script], env=env, timeout=60).returncode == 3
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[-1] == "step-000001" and any(n.startswith(".tmp-step-000002") for n in names)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000001"]
    assert ckpt.latest(tmp_path).name == "step-000001"
    leftover = next(tmp_path.glob(".tmp-*"))
    assert (leftover / "model.safetensors").exists() and not (leftover / "state.json").exists()

    ckpt.save(tmp_path, TrainState(step=2), torch.nn.Linear(4, 4))  # the next save sweeps leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000001", "step-000002"]


def test_keep_newest_and_the_last_good(tmp_path):
    model = torch.nn.Linear(2, 2)
    for step in (10, 20):
        ckpt.save(tmp_path, TrainState(step=step), model)
    assert ckpt.last_good(tmp_path) is None
    ckpt.mark_good(tmp_path / "step-000010", loss=3.1)
    assert ckpt.is_good(tmp_path / "step-000010") and ckpt.last_good(tmp_path).name == "step-000010"
    for step in (30, 40, 50):
        ckpt.save(tmp_path, TrainState(step=step), model, keep=2)
    # the two newest, plus step 10, the only rollback target
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000010", "step-000040", "step-000050"]
    ckpt.mark_good(tmp_path / "step-000040")
    ckpt.prune(tmp_path, keep=1)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000040", "step-000050"]

    # rollback to step 40: later checkpoints go; the same step saved again replaces its folder
    ckpt.remove_after(tmp_path, 40)
    assert ckpt.latest(tmp_path).name == "step-000040"
    ckpt.save(tmp_path, TrainState(step=40, rollbacks=1, lr_scale=0.5), model)
    assert ckpt.read_state(tmp_path / "step-000040").rollbacks == 1
    assert not ckpt.is_good(tmp_path / "step-000040")  # new weights must earn it again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000040"]
    with pytest.raises(ValueError, match="at least 1"):
        ckpt.prune(tmp_path, keep=0)
