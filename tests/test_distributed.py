"""Data-parallel training through torchrun: two CPU processes over gloo reach the losses and weights
of one process training on the same global batch."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_fixtures import build_corpus, make_run

from smolforge.tasks.train import checkpoint as ckpt
from smolforge.tasks.train.loop import train_stage

pytestmark = pytest.mark.slow


def test_two_processes_match_one(tmp_path):
    sources = build_corpus(tmp_path / "corpus")
    single, plans, logs = make_run(sources, tmp_path / "single")
    single.val = {}
    train_stage(single, plans[0], ckpt.TrainState(stage="one"))
    expected = {s: m["loss"] for s, m in logs if "loss" in m}

    out = tmp_path / "ddp"
    out.mkdir()
    worker = Path(__file__).parent / "ddp_worker.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker), str(tmp_path / "corpus"), str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    losses = {int(k): v for k, v in json.loads((out / "losses.json").read_text()).items()}
    assert losses.keys() == expected.keys()
    for step, loss in expected.items():
        assert losses[step] == pytest.approx(loss, rel=1e-5), step
    weights = torch.load(out / "weights.pt")
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(weights[name], value, rtol=1e-4, atol=1e-5, msg=name)
