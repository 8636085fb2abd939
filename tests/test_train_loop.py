"""The stage loop on a micro model and a synthetic packed corpus: learning, an injected loss spike
and its rollback, divergence, and resuming a killed stage to the same weights."""

import random
from pathlib import Path

import pytest
import torch

from smolforge.models.architecture import build_model
from smolforge.models.config import ModelConfig, OptimizerConfig
from smolforge.models.optim import build_optimizer
from smolforge.tasks.curate.documents import Doc
from smolforge.tasks.curate.pack import pack_documents
from smolforge.tasks.curate.tokenizer import train_tokenizer
from smolforge.tasks.train import checkpoint as ckpt
from smolforge.tasks.train.config import PretrainConfig
from smolforge.tasks.train.data import CorpusSources, plan_stages, val_batches
from smolforge.tasks.train.loop import DivergenceError, StageRun, evaluate, train_stage
from smolforge.tasks.train.schedule import StageSchedule

WORDS = "the river town bridge market water stone boat harbour spring grain merchant old new small long".split()


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> CorpusSources:
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 90))) + "." for _ in range(300)]
    train_tokenizer(texts, vocab_size=300, out_dir=root / "tok")
    from smolforge.tasks.curate.tokenizer import load_tokenizer

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


def test_loss_goes_down_and_metrics_are_logged(sources, tmp_path):
    run, plans, logs = make_run(sources, tmp_path)
    before = evaluate(run)["val_loss"]
    state = train_stage(run, plans[0], ckpt.TrainState(stage="one"))
    assert state.stage_step == 12 and state.step == 12
    after = evaluate(run)["val_loss"]
    assert after < before - 0.5
    logged = set().union(*(m.keys() for _, m in logs))
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "val_loss", "val_loss.a", "val_loss.b"} <= logged
    assert [s for s, m in logs if "loss" in m] == [2, 4, 6, 8, 10, 12]


def test_injected_spike_rolls_back_skips_and_lowers_lr(sources, tmp_path):
    run, plans, _ = make_run(sources, tmp_path)
    run.perturb_loss = lambda data_step, loss: loss * 50 if data_step == 7 else loss
    state = train_stage(run, plans[0], ckpt.TrainState(stage="one"))
    assert [e["reason"] for e in run.events] == ["loss_spike"]
    event = run.events[0]
    assert event["data_step"] == 7 and event["lr_scale_after"] == 0.5
    assert state.rollbacks == 1 and state.lr_scale == 0.5
    # back to the checkpoint of step 4, then on from data step 8: batches 4-7 are not seen again
    assert state.stage_step == 12 and state.data_step == 16


def test_nan_loss_rolls_back_and_persistent_divergence_stops_with_a_clear_error(sources, tmp_path):
    run, plans, _ = make_run(sources, tmp_path, max_rollbacks=2)
    run.perturb_loss = lambda data_step, loss: loss * float("nan") if data_step >= 5 else loss
    with pytest.raises(DivergenceError, match="keeps diverging: nonfinite_loss .* after 2 rollbacks"):
        train_stage(run, plans[0], ckpt.TrainState(stage="one"))
    assert [e["reason"] for e in run.events] == ["nonfinite_loss"] * 3


def test_killed_stage_resumes_to_the_same_weights(sources, tmp_path):
    full, plans, _ = make_run(sources, tmp_path / "full")
    train_stage(full, plans[0], ckpt.TrainState(stage="one"))

    class Killed(Exception):
        pass

    first, plans, _ = make_run(sources, tmp_path / "killed")

    def kill(data_step, loss):
        if data_step == 10:
            raise Killed
        return loss

    first.perturb_loss = kill
    with pytest.raises(Killed):
        train_stage(first, plans[0], ckpt.TrainState(stage="one"))
    # a new process: fresh objects, resumed from the newest checkpoint on disk
    second, plans, _ = make_run(sources, tmp_path / "killed")
    latest = ckpt.latest(second.checkpoints)
    assert ckpt.step_of(latest) == 8
    state = ckpt.load(latest, second.model, second.optimizer)
    train_stage(second, plans[0], state)
    for (name, a), b in zip(full.model.state_dict().items(), second.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_second_stage_continues_the_schedule_and_decays(sources, tmp_path):
    run, plans, logs = make_run(sources, tmp_path)
    state = train_stage(run, plans[0], ckpt.TrainState(stage="one"))
    state.stage, state.stage_step, state.data_step = "two", 0, 0
    state = train_stage(run, plans[1], state)
    assert state.step == 18
    lrs = {s: m["lr"] for s, m in logs if "lr" in m}
    assert lrs[2] < lrs[4] == lrs[12] == pytest.approx(1e-2)  # warmup, then stable through stage one
    assert lrs[14] < lrs[12] and lrs[18] < lrs[16] < lrs[14]  # the decay is the last stage
