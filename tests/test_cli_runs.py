"""The ways of running smolforge that the README advertises, taken the way a user takes them: the
`smolforge` command in a project folder that does not exist yet. A subprocess is the clean way to a
fresh folder (Prefect reads its settings at import). To stay cheap, the runs read the session's
sample corpus and curate two of its sources; the pretraining budget fits what those hold."""

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

pytestmark = pytest.mark.slow

SMOLFORGE = Path(sys.executable).parent / "smolforge"  # the console script of this environment


def small_run(sample_corpus: Path) -> list[str]:
    """`--set` arguments: the chat and web sources (~23k tokens) and one 60-step stage on them."""
    settings = [
        "curate.sample_corpus=null",
        f"curate.data_dir={sample_corpus}",
        "curate.sources=[{name: chat, kind: jsonl, path: 'jsonl/*.jsonl'}, {name: web, kind: html, path: 'html/**/*.html'}]",
        "pretrain.stages=[{name: stable, steps: 60, seq_len: 64, mixture: {chat: 0.5, web: 0.5}}]",
        "pretrain.schedule.decay_fraction=0.3",
        "pretrain.eval_every=20",
        "pretrain.checkpoint.every_steps=20",
        "distill=null",
        "finetune=null",
        "merge=null",
        "evaluate=null",
        "promote=null",
    ]
    return [arg for s in settings for arg in ("--set", s)]


def smolforge(env: dict[str, str], home: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the command with `home` as the project folder."""
    done = subprocess.run(
        [str(SMOLFORGE), *args], env={**env, "SMOLFORGE_HOME": str(home)}, capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, f"smolforge {' '.join(args)}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A project folder that does not exist yet; the module's runs share it (whichever runs first
    curates, the others take the corpus from the cache)."""
    return tmp_path_factory.mktemp("cli") / "new-project"


def test_nproc_two_in_a_fresh_project_folder_trains_like_one_process_and_registers(sample_corpus, home, outside_env):
    two = smolforge(outside_env, home, "run", "pipeline", "--preset", "tiny", *small_run(sample_corpus), "--set", "pretrain.nproc=2")
    # the same run in one process, in the same folder (curation comes from the cache)
    one = smolforge(outside_env, home, "run", "pipeline", "--preset", "tiny", *small_run(sample_corpus), "--set", "pretrain.nproc=1")

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    stages = {}  # processes -> the stage's metrics, found from the registered model's artifact
    assert "models:/smolforge-base@candidate" in two.stdout and "models:/smolforge-base@candidate" in one.stdout
    versions = client.search_model_versions("name='smolforge-base'")
    assert len(versions) == 2
    for version in versions:
        manifest = home / "artifacts" / "pretrained" / version.tags["smolforge.artifact_key"] / "manifest.json"
        metrics = json.loads(manifest.read_text())["metrics"]
        stages[metrics["processes"]] = metrics
    assert sorted(stages) == [1, 2] and stages[1]["steps"] == stages[2]["steps"] == 60
    curves = {
        n: {m.step: m.value for m in client.get_metric_history(s["mlflow_run_id"], "loss")} for n, s in stages.items()
    }
    # The same global batch from the same start: the first logged losses agree to float precision
    # (measured: 9.917626 at step 10 and 9.619224 / 9.619225 at step 20 in both), so a wrong
    # split of the batch or a wrong sum of the gradients shows here at once.
    for step in (10, 20):
        assert curves[2][step] == pytest.approx(curves[1][step], rel=1e-5), step
    # Afterwards they drift apart: the two processes add their gradients in another order, a
    # gradient-norm spike at step 20 (~5 against ~1) amplifies the last-bit differences and Adam
    # carries them on. Measured on this setup (2026-11-24, two runs of each; each pair was
    # bit-identical): val_loss 7.288505 with one process, 7.268649 with two, a gap of 0.020 after
    # 60 steps (0.000 at step 20, 0.014 at step 40). 0.05 leaves room for other CPUs' kernels to
    # drift further. It is a coarse guard (a stage that did not train, diverged or stopped early
    # misses it; other seeds land 0.008-0.066 away and half the global batch 0.056 away), so the
    # exact comparison above is what tells "the same training" from "another training".
    assert stages[2]["val_loss"] == pytest.approx(stages[1]["val_loss"], abs=0.05)


def test_the_sweep_example_runs_from_its_config_file(sample_corpus, home, outside_env):
    """`--config examples/sweep-tiny.yaml` as the README shows it, with the example's budget (its
    `fixed` stages read sources these runs do not curate) and trial count cut down by `--set`."""
    example = Path(__file__).resolve().parent.parent / "examples" / "sweep-tiny.yaml"
    fixed = (
        "sweep.fixed={pretrain.stages: [{name: stable, steps: 16, seq_len: 64, mixture: {chat: 0.5, web: 0.5}}], "
        "pretrain.schedule.warmup_steps: 4, pretrain.schedule.decay_fraction: 0.25, pretrain.eval_every: 4}"
    )
    done = smolforge(
        outside_env, home, "run", "sweep", "--preset", "tiny", "--config", str(example), *small_run(sample_corpus),
        "--set", "sweep.trials=2", "--set", fixed,
    )
    assert "study       2 complete," in done.stdout and (home / "optuna.db").is_file()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    sweep_run = client.get_run(done.stdout.split("MLflow run  ")[1].split()[0])
    trials = client.search_runs(
        [sweep_run.info.experiment_id], f"tags.mlflow.parentRunId = '{sweep_run.info.run_id}'"
    )
    assert sweep_run.info.status == "FINISHED" and len(trials) == 2
