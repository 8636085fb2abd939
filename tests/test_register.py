"""Registering a model trained here says nothing a user would act on: no hub model card or license
that a local model cannot have, no bitsandbytes kernel notice in a run that uses no 4-bit model."""

import logging
import subprocess
import sys

import mlflow
from train_fixtures import build_corpus

from smolforge.artifacts import ArtifactStore
from smolforge.models.architecture import build_model, tokenizer_ids
from smolforge.models.config import ModelConfig
from smolforge.tasks.curate.tokenizer import load_tokenizer
from smolforge.tasks.registry.register import register_model


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_registering_a_local_model_logs_no_hub_card_or_license_warning(tmp_path):
    build_corpus(tmp_path / "corpus")
    tokenizer = load_tokenizer(str(tmp_path / "corpus" / "tok"))
    shape = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, max_seq_len=32)
    with mlflow.start_run(run_name="trained-here") as run:
        pass
    store = ArtifactStore(tmp_path / "artifacts")
    with store.write("pretrained", "quiet0000", step="test") as (folder, metrics):
        build_model(shape, **tokenizer_ids(tokenizer), seed=0).save_pretrained(folder / "model")
        tokenizer.save_pretrained(folder / "model")
        metrics["mlflow_run_id"] = run.info.run_id
    records = Records()
    logging.getLogger("mlflow.transformers").addHandler(records)
    try:
        registered = register_model.fn(store.ref("pretrained", "quiet0000"), "quiet-model", {})
    finally:
        logging.getLogger("mlflow.transformers").removeHandler(records)
    assert registered["uri"] == "models:/quiet-model@candidate"
    assert not [m for m in records.messages if "model card" in m or "license" in m], records.messages


def test_importing_peft_beside_the_registry_prints_no_bitsandbytes_kernel_notice():
    """MLflow's transformers flavor imports peft, which imports bitsandbytes (on an AVX512-BF16 CPU
    it then logs that it could not fetch a hub kernel)."""
    done = subprocess.run(
        [sys.executable, "-c", "import smolforge.tasks.registry.register, peft, bitsandbytes"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "kernels" not in done.stderr, done.stderr[-2000:]
