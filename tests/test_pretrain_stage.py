"""The pretraining task's stage runner: a stage killed mid-way resumes from its work folder and
reaches the weights of an uninterrupted run, and `nproc: 2` trains through torchrun (two CPU
processes over gloo) to the same losses and weights as one process, with rank 0 logging to the
stage's MLflow run; a killed two-process stage resumes like a one-process one."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import build_corpus

from smolforge.tasks.curate.pack import read_meta
from smolforge.tasks.train import checkpoint as ckpt
from smolforge.tasks.train.config import PretrainSection
from smolforge.tasks.train.data import CorpusSources
from smolforge.tasks.train.prefect_tasks import plan_pretraining
from smolforge.tasks.train.stage import StageSpec, launch, run_stage

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The micro corpus with the `corpus.json` record a curated corpus has."""
    root = tmp_path_factory.mktemp("micro-corpus")
    build_corpus(root)
    record = {"sources": {n: {**read_meta(root / n), "uri": str(root / n)} for n in ("a", "b")}, "tokenizer": str(root / "tok")}
    (root / "corpus.json").write_text(json.dumps(record))
    return root


def section(**over) -> PretrainSection:
    settings = dict(
        model={"hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64, "max_seq_len": 64},
        optimizer={"lr": 1e-2},
        mtp={"heads": 1},
        stages=[{"name": "one", "steps": 20, "mixture": {"a": 1, "b": 1}, "seq_len": 32}],
        batch_size=4,
        schedule={"warmup_steps": 4, "decay_fraction": 0.3},
        checkpoint={"every_steps": 5, "keep": 2},
        eval_every=10,
        eval_batches=1,
        log_every=5,
        sample_prompts=["the river"],
    )
    return PretrainSection(**{**settings, **over})


def spec_for(corpus: Path, cfg: PretrainSection, root: Path, run_id: str | None = None) -> StageSpec:
    stage = plan_pretraining(cfg, CorpusSources.from_corpus_json(corpus))[0]
    (root / "out").mkdir(parents=True)
    (root / "work").mkdir()
    return StageSpec(
        out=root / "out", workdir=root / "work", corpus=corpus, previous=None, stage_index=0,
        config=stage.config, rates=stage.rates, start=stage.start, run_id=run_id,
    )


def weights(spec: StageSpec) -> dict[str, torch.Tensor]:
    return load_file(spec.out / "model" / "model.safetensors")


def test_a_stage_killed_mid_way_resumes_to_the_uninterrupted_weights_and_says_so(corpus, tmp_path, caplog):
    cfg = section()
    runs = {}
    for name in ("reference", "killed"):
        with mlflow.start_run(run_name=f"{name}-stage") as active:
            pass
        runs[name] = active.info.run_id
    reference = spec_for(corpus, cfg, tmp_path / "reference", run_id=runs["reference"])
    run_stage(reference)

    killed = spec_for(corpus, cfg, tmp_path / "killed", run_id=runs["killed"])
    # The process kills itself (SIGKILL: no cleanup runs) as it is about to write step 15's
    # checkpoint, so steps 11-15 are lost and must be trained again from step 10's.
    script = textwrap.dedent(
        f"""
        import os, signal
        from smolforge.tasks.train import loop
        from smolforge.tasks.train.stage import StageSpec, run_stage
        real_save = loop._save
        def save_or_die(run, state):
            if state.step == 15:
                os.kill(os.getpid(), signal.SIGKILL)
            real_save(run, state)
        loop._save = save_or_die
        run_stage(StageSpec.model_validate_json({killed.model_dump_json()!r}))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]
    assert not (killed.out / "model").exists()
    assert sorted(p.name for p in (killed.workdir / "checkpoints").iterdir() if p.name.startswith("step"))[-1].endswith("10")

    result = run_stage(killed)  # the task running again: same work folder
    assert result["steps"] == 20
    for name, value in weights(reference).items():
        torch.testing.assert_close(weights(killed)[name], value, rtol=0, atol=1e-6, msg=name)
    checkpoint = killed.workdir / "checkpoints" / "step-000010"
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "resumes" in r.getMessage()]
    assert said == [f"stage 'one' resumes at step 10 from checkpoint {checkpoint} (an earlier attempt stopped there)"]
    tags = mlflow.get_run(runs["killed"]).data.tags
    assert (tags["smolforge.resumed_at_step"], tags["smolforge.resumed_from"]) == ("10", str(checkpoint))
    assert "smolforge.resumed_at_step" not in mlflow.get_run(reference.run_id).data.tags  # an uninterrupted stage


def _pids_with(marker: str) -> list[int]:
    """Processes whose command line contains `marker` (torchrun starts its workers in sessions of
    their own, so killing the launcher's process group would leave them running)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes().decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:  # the process ended while we looked
            pass
    return pids


def test_a_killed_two_process_stage_resumes_to_the_uninterrupted_weights(corpus, tmp_path):
    """The same through torchrun: once step 5's checkpoint exists, the launcher, torchrun and both
    workers are SIGKILLed (a machine going down: no cleanup runs anywhere), and the next launch on
    the same work folder continues from the newest checkpoint to the uninterrupted run's weights."""
    cfg = section(nproc=2)
    reference = spec_for(corpus, cfg, tmp_path / "reference")
    launch(reference, 2)

    killed = spec_for(corpus, cfg, tmp_path / "killed")
    script = f"from smolforge.tasks.train.stage import StageSpec, launch; launch(StageSpec.model_validate_json({killed.model_dump_json()!r}), 2)"
    launcher = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (killed.workdir / "checkpoints" / ckpt.checkpoint_name(5)).exists():
        assert launcher.poll() is None and time.monotonic() < deadline, "the stage ended before it could be killed"
        time.sleep(0.01)
    for pid in [launcher.pid, *_pids_with(str(killed.workdir / "spec.json"))]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    launcher.wait()
    while _pids_with(str(killed.workdir / "spec.json")):  # the kernel reaps the workers
        time.sleep(0.1)
    assert not (killed.out / "model").exists()
    left = ckpt.latest(killed.workdir / "checkpoints")
    assert left is not None
    resumed_from = int(left.name.removeprefix("step-"))
    assert 5 <= resumed_from < 20

    with mlflow.start_run(run_name="resumed-stage") as active:  # a retried task opens a new stage run
        pass
    killed.run_id = active.info.run_id
    result = launch(killed, 2)  # the task running again: same work folder
    assert result["steps"] == 20 and result["processes"] == 2
    logged = [m.step for m in mlflow.MlflowClient().get_metric_history(active.info.run_id, "loss")]
    assert logged and min(logged) > resumed_from  # it trained only the steps after the checkpoint
    for name, value in weights(reference).items():
        torch.testing.assert_close(weights(killed)[name], value, rtol=0, atol=1e-6, msg=name)


def test_nproc_two_trains_through_torchrun_like_one_process(corpus, tmp_path):
    """Same global batch, so the same loss at every logged step (the processes' losses are summed
    before logging), the same validation loss and the same weights."""
    client = mlflow.MlflowClient()
    runs = {}
    for name in ("single", "ddp"):
        with mlflow.start_run(run_name=f"{name}-stage") as active:
            pass
        runs[name] = active.info.run_id
    single = spec_for(corpus, section(log_every=2), tmp_path / "single", run_id=runs["single"])
    one = run_stage(single)
    ddp = spec_for(corpus, section(log_every=2, nproc=2), tmp_path / "ddp", run_id=runs["ddp"])
    two = launch(ddp, 2)
    assert two["processes"] == 2 and two["steps"] == one["steps"] == 20
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-4)
    curves = {name: {m.step: m.value for m in client.get_metric_history(run_id, "loss")} for name, run_id in runs.items()}
    assert list(curves["ddp"]) == list(range(2, 21, 2)) and curves["ddp"].keys() == curves["single"].keys()
    for step, loss in curves["single"].items():
        assert curves["ddp"][step] == pytest.approx(loss, rel=1e-5), step
    for name, value in weights(single).items():
        torch.testing.assert_close(weights(ddp)[name], value, rtol=1e-4, atol=1e-5, msg=name)
    run = client.get_run(runs["ddp"])
    assert run.data.params["processes"] == "2"
    assert {"loss", "val_loss", "tokens_per_s"} <= set(run.data.metrics)


def test_a_failing_torchrun_names_the_stage_and_shows_the_error(corpus, tmp_path):
    spec = spec_for(corpus, section(nproc=2), tmp_path / "bad")
    spec.corpus = tmp_path / "nowhere"
    with pytest.raises(RuntimeError, match=r"torchrun with 2 processes failed .* stage 'one'(.|\n)*no corpus record"):
        launch(spec, 2)
