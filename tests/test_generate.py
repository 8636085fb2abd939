"""`smolforge generate` in a fresh process, as a user runs it: a registered chat model answers in
its chat template, a base model's folder continues the text, sampling with a seed repeats, and a
reference that names no model is refused with its value named (a non-zero exit from the command)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from reference_answers import greedy_answer

from smolforge.artifacts import ArtifactStore
from smolforge.model_source import ModelSourceError
from smolforge.tasks.serve.generate import Sampling, generate, generate_from

pytestmark = pytest.mark.slow

SMOLFORGE = Path(sys.executable).parent / "smolforge"
QUESTION = "What does `json.dumps` do?"


def _generate(*args: str) -> subprocess.CompletedProcess:
    """The command in a new process with this session's project folder and tracking store."""
    return subprocess.run(
        [str(SMOLFORGE), "generate", *args], env={**os.environ, "COLUMNS": "200"}, capture_output=True, text=True, timeout=300
    )


def test_a_registered_chat_model_answers_in_its_chat_template(tiny_pipeline):
    registered = tiny_pipeline.finetune.registered
    done = _generate(f"models:/{registered.name}/{registered.version}", QUESTION, "--max-new-tokens", "12")
    assert done.returncode == 0, done.stderr[-3000:]
    expected = greedy_answer(tiny_pipeline.finetune.model.path / "model", QUESTION, chat=True, max_new_tokens=12)
    assert done.stdout == expected + "\n"


def test_a_base_models_folder_continues_the_text(tiny_pipeline):
    folder = tiny_pipeline.pretrain.model.path
    done = _generate(str(folder), "The function", "--max-new-tokens", "10")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == greedy_answer(folder / "model", "The function", chat=False, max_new_tokens=10) + "\n"


def test_sampling_with_a_seed_repeats_and_an_artifact_key_names_a_model(tiny_pipeline, session_home, capsys):
    key = f"finetuned:{tiny_pipeline.finetune.model.key}"
    store = ArtifactStore(session_home / "artifacts")
    hot = Sampling(max_new_tokens=16, temperature=1.5, top_p=0.95, seed=7)
    first = generate_from(key, QUESTION, store, hot)
    again = generate_from(key, QUESTION, store, hot)
    assert first == again and first
    assert capsys.readouterr().out.startswith(first.split()[0])  # streamed as it was generated
    greedy = generate(tiny_pipeline.finetune.model.path / "model", QUESTION, None, Sampling(max_new_tokens=16))
    assert greedy == greedy_answer(tiny_pipeline.finetune.model.path / "model", QUESTION, chat=True, max_new_tokens=16)


@pytest.mark.parametrize(
    "uri, says",
    [
        ("models:/smolforge-no-such-model/1", "no registered model 'smolforge-no-such-model'; registered: "),
        ("models:/smolforge-chat@no-such-alias", "smolforge-chat has no alias 'no-such-alias'; its aliases: @c"),
        ("models:/smolforge-chat/999", "smolforge-chat has no version '999'; its versions: [1"),
        ("finetuned:0123456789abcdef", "no complete artifact with that key"),
        ("no-such-model", "neither a registry URI"),
    ],
)
def test_a_reference_that_names_no_model_is_refused_with_its_value(tiny_pipeline, session_home, uri, says):
    with pytest.raises(ModelSourceError) as refused:
        generate_from(uri, QUESTION, ArtifactStore(session_home / "artifacts"), Sampling())
    assert uri in str(refused.value) and says in str(refused.value)


def test_a_folder_that_holds_no_model_is_refused_with_a_non_zero_exit(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    done = _generate(str(tmp_path), QUESTION)
    assert done.returncode == 2
    assert str(tmp_path) in done.stdout and "holds no transformers model" in done.stdout, done.stdout
