"""The stage loop on a micro model and a synthetic packed corpus: learning, an injected loss spike
and its rollback, divergence, and resuming a killed stage to the same weights."""

import pytest
import torch
from train_fixtures import build_corpus, make_run

from smolforge.models.config import MTPConfig
from smolforge.models.mtp import MTPHeads
from smolforge.tasks.train import checkpoint as ckpt
from smolforge.tasks.train.loop import DivergenceError, evaluate, train_stage


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("corpus"))



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


def test_compiled_loop_trains_like_the_eager_one(sources, tmp_path, monkeypatch):
    """`compile: true` changes how the step runs, not what it computes (MTP on, to cover the
    hidden states leaving the compiled part). Dynamo traces the step and AOTAutograd builds its
    backward here; inductor's C++ code generation is left out because it takes 40-90 s on 2 cores
    (`bench/pretrain.py --compile` runs it)."""
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, backend="aot_eager", **kw))
    runs = {}
    for name in ("eager", "compiled"):
        run, plans, logs = make_run(sources, tmp_path / name)
        torch.manual_seed(0)
        run.mtp = MTPHeads(run.model.config, MTPConfig(heads=1))
        run.config = run.config.model_copy(update={"compile": name == "compiled"})
        train_stage(run, plans[0], ckpt.TrainState(stage="one"))
        runs[name] = logs
    eager_logs, compiled_logs = runs["eager"], runs["compiled"]
    expected = [m["loss"] for _, m in eager_logs if "loss" in m]
    assert [m["loss"] for _, m in compiled_logs if "loss" in m] == pytest.approx(expected, rel=1e-5)
