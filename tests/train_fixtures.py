"""A micro model on a synthetic packed corpus, shared by the loop tests and the torchrun worker."""

import random
from pathlib import Path

import torch

from smolforge.models.architecture import build_model
from smolforge.models.config import ModelConfig, OptimizerConfig
from smolforge.models.optim import build_optimizer
from smolforge.tasks.curate.documents import Doc
from smolforge.tasks.curate.pack import pack_documents
from smolforge.tasks.curate.tokenizer import load_tokenizer, train_tokenizer
from smolforge.tasks.train.config import PretrainConfig
from smolforge.tasks.train.data import CorpusSources, plan_stages, val_batches
from smolforge.tasks.train.loop import StageRun
from smolforge.tasks.train.schedule import StageSchedule

WORDS = "the river town bridge market water stone boat harbour spring grain merchant old new small long".split()


def build_corpus(root: Path) -> CorpusSources:
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 90))) + "." for _ in range(300)]
    train_tokenizer(texts, vocab_size=300, out_dir=root / "tok")
    tok = load_tokenizer(str(root / "tok"))
    folders = {}
    for name, part in (("a", texts[:150]), ("b", texts[150:])):
        docs = [Doc(id=f"{name}/{i}", source=name, text=t) for i, t in enumerate(part)]
        pack_documents(docs, tok, root / name, val_fraction=0.1)
        folders[name] = root / name
    return CorpusSources.from_folders(folders, tokenizer=str(root / "tok"))


def make_run(sources, tmp_path, *, steps=(12, 6), **stability) -> tuple[StageRun, list, list]:
    """A micro model (2 layers, width 32) on two stages; returns the run, the plans and the log."""
    cfg = PretrainConfig(
        stages=[
            {"name": "one", "steps": steps[0], "mixture": {"a": 1, "b": 1}, "seq_len": 32},
            {"name": "two", "steps": steps[1], "mixture": {"a": 1}, "seq_len": 32},
        ],
        batch_size=4,
        schedule={"warmup_steps": 4},
        stability={"spike_window": 3, **stability},
        checkpoint={"every_steps": 4, "keep": 3},
        eval_every=6,
        eval_batches=1,
        log_every=2,
    )
    plans = plan_stages(cfg, sources)
    model = build_model(
        ModelConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64, max_seq_len=64),
        vocab_size=300, bos_id=0, eos_id=1, pad_id=2, seed=0,
    )
    optimizer = build_optimizer(model, OptimizerConfig(lr=1e-2))
    logs: list = []
    run = StageRun(
        model=model, optimizer=optimizer, schedule=StageSchedule.from_plans(plans, cfg.schedule), config=cfg,
        checkpoints=tmp_path / "ck", device=torch.device("cpu"), val=val_batches(sources, 32, 1),
        log=lambda m, s: logs.append((s, m)),
    )
    return run, plans, logs


def open_corpus(root: Path) -> CorpusSources:
    return CorpusSources.from_folders({n: root / n for n in ("a", "b")}, tokenizer=str(root / "tok"))
