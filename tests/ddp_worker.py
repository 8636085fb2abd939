"""Run by torchrun from test_distributed.py: train the micro model's first stage data-parallel and
let rank 0 write the per-step losses and the final weights."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_fixtures import make_run, open_corpus  # noqa: E402

from smolforge.tasks.train import checkpoint as ckpt  # noqa: E402
from smolforge.tasks.train.distributed import init_from_env  # noqa: E402
from smolforge.tasks.train.loop import train_stage  # noqa: E402

corpus, out = Path(sys.argv[1]), Path(sys.argv[2])
run, plans, logs = make_run(open_corpus(corpus), out)
run.world = init_from_env(torch.device("cpu"))
run.val = {}
train_stage(run, plans[0], ckpt.TrainState(stage="one"))
if run.world.is_main:
    (out / "losses.json").write_text(json.dumps({s: m["loss"] for s, m in logs if "loss" in m}))
    torch.save(run.model.state_dict(), out / "weights.pt")
