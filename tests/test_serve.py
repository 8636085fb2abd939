"""The registered chat model served by MLflow's own server, as a user starts it:
`mlflow models serve -m models:/smolforge-chat/N --env-manager local` on 127.0.0.1 answers
`/invocations` with OpenAI-style chat messages in and the assistant's answer out, the chat template
applied and the answer capped by the logged `max_new_tokens`. One server start (~10-20 s): the
pyfunc load dominates."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest
from reference_answers import greedy_answer

from smolforge.tasks.registry.serving import CHAT_TASK, COMPLETIONS_TASK, MAX_NEW_TOKENS

pytestmark = pytest.mark.slow

MLFLOW = Path(sys.executable).parent / "mlflow"
QUESTION = "What does `json.dumps` do?"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, payload: dict) -> list[dict]:
    """The server's predictions: one OpenAI-style response per request."""
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def _stop(server: subprocess.Popen) -> None:
    """The server and its uvicorn worker: the whole process group it leads."""
    with contextlib.suppress(ProcessLookupError):  # the group is gone already
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    server.wait()


def _wait_until_up(url: str, server: subprocess.Popen, log: Path, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow models serve exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    pytest.fail(f"mlflow models serve did not answer {url} within {seconds} s:\n{log.read_text()[-3000:]}")


def test_chat_models_are_logged_for_chat_and_the_others_for_text_completion(tiny_pipeline):
    tasks = {
        stage: mlflow.models.get_model_info(f"models:/{r.registered.name}/{r.registered.version}").metadata["task"]
        for stage, r in (("pretrain", tiny_pipeline.pretrain), ("distill", tiny_pipeline.distill),
                         ("finetune", tiny_pipeline.finetune), ("merge", tiny_pipeline.merge))
    }
    assert tasks == {"pretrain": COMPLETIONS_TASK, "distill": COMPLETIONS_TASK, "finetune": CHAT_TASK, "merge": CHAT_TASK}


def test_mlflow_models_serve_answers_chat_messages_with_the_models_own_answer(tiny_pipeline, tmp_path):
    registered = tiny_pipeline.finetune.registered
    port, log = _free_port(), tmp_path / "serve.log"
    command = [str(MLFLOW), "models", "serve", "-m", f"models:/{registered.name}/{registered.version}",
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    # The session's tracking URI is in this environment; the server starts `uvicorn` by name, found
    # on the PATH of an activated environment.
    env = {**os.environ, "PATH": f"{MLFLOW.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        _wait_until_up(f"http://127.0.0.1:{port}/ping", server, log)
        url = f"http://127.0.0.1:{port}/invocations"
        (asked,) = _post(url, {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 12})
        (unbounded,) = _post(url, {"messages": [{"role": "user", "content": QUESTION}]})
    finally:
        _stop(server)
    assert asked["object"] == "chat.completion"
    choice = asked["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert 1 <= asked["usage"]["completion_tokens"] <= 12
    answer = choice["message"]["content"]
    assert isinstance(answer, str) and "<|im_start|>" not in answer and QUESTION not in answer
    # The model's own greedy answer in its template (MLflow's decode tidies spaces before punctuation).
    expected = greedy_answer(tiny_pipeline.finetune.model.path / "model", QUESTION, chat=True, max_new_tokens=12)
    assert "".join(answer.split()) == "".join(expected.split()), (answer, expected)
    # Without max_tokens the logged inference config caps the answer, well below the 256-token context.
    assert unbounded["usage"]["completion_tokens"] <= MAX_NEW_TOKENS
