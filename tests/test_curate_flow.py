"""The curation flow end to end on the sample corpus: funnel, planted cases, MLflow, caching."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from smolforge.artifacts import ArtifactStore
from smolforge.errors import ConfigError
from smolforge.flows.config import load_config
from smolforge.flows.pipeline import pipeline
from smolforge.tasks.curate.documents import read_docs
from smolforge.tasks.curate.pack import open_split

pytestmark = pytest.mark.slow


def tiny(*overrides: str):
    """The tiny preset stopping after curation: these tests are about curation (the later stages have
    their own tests)."""
    return load_config("tiny", overrides=["pretrain=null", "distill=null", "finetune=null", "merge=null", "evaluate=null", "promote=null", *overrides])


def manifests(store: ArtifactStore) -> dict[tuple[str, str], float]:
    """(kind, key) -> manifest mtime: a recomputed artifact gets a new manifest."""
    return {(p.parent.parent.name, p.parent.name): p.stat().st_mtime for p in store.root.glob("*/*/manifest.json")}


@pytest.fixture(scope="module")
def first_run(session_home, sample_corpus):
    return pipeline(tiny())


@pytest.fixture(scope="module")
def store(session_home) -> ArtifactStore:
    return ArtifactStore(session_home / "artifacts")


def test_funnel_counts_chain_and_nothing_disappears(first_run):
    rows = first_run.curate.funnel
    assert [r["step"] for r in rows] == ["extract", "language", "quality", "pii", "dedup", "pack"]
    for before, after in zip(rows, rows[1:]):
        assert before["docs_out"] == after["docs_in"]
    corpus = Path(first_run.curate.corpus.uri)
    dropped = pd.read_parquet(corpus / "dropped.parquet")
    assert rows[0]["docs_in"] == rows[-1]["docs_out"] + len(dropped)
    assert dropped["reason"].str.len().min() > 0 and not dropped["id"].duplicated().any()
    assert rows[-1]["tokens_out"] > 50_000


def test_planted_cases_are_dropped_with_their_reasons(first_run):
    dropped = pd.read_parquet(Path(first_run.curate.corpus.uri) / "dropped.parquet")
    reason = dict(zip(dropped["id"], dropped["reason"]))
    assert reason["web/binary_image.html"] == "binary_file"
    assert reason["web/empty.html"] == "empty_file"
    assert reason["pdfs/corrupt.pdf"] == "pdf_corrupt"
    assert reason["pdfs/encrypted.pdf"] == "pdf_encrypted"
    assert reason["pdfs/truncated.pdf"] == "pdf_truncated"
    assert reason["pdfs/empty.pdf"] == "empty_file"
    assert reason.get("pdfs/scanned_no_text.pdf", "kept by OCR") in ("needs_ocr", "kept by OCR")
    assert reason["books/huge_concatenated.txt"] == "too_large"
    assert {reason["chat/malformed_lines.jsonl#2"], reason["chat/malformed_lines.jsonl#3"], reason["chat/malformed_lines.jsonl#4"]} == {
        "bad_json", "missing_field", "bad_field_type"
    }
    assert reason["web/foreign_language_nl.html"] == "language_not_kept"
    crawl = {r for i, r in reason.items() if i.startswith("crawl/")}
    assert {"not_html", "language_not_kept"} <= crawl  # the PNG response and the Indonesian page
    # one of each duplicate pair survives, the other is dropped by dedup
    pair = {i: reason.get(i) for i in ("books/duplicate_exact.txt", "books/shakespeare_macbeth_folio.txt")}
    assert sorted(r for r in pair.values() if r) == ["exact_duplicate"]
    assert reason.get("books/duplicate_near.txt") == "near_duplicate"


def test_curated_text_is_masked_and_packed(first_run, store):
    corpus = Path(first_run.curate.corpus.uri)
    report = json.loads((corpus / "corpus.json").read_text())
    texts = [d.text for ref in store.root.glob("deduped/*") for d in read_docs(ref / "docs.parquet")]
    emails = {m for t in texts for m in re.findall(r"[\w.+-]+@[\w-]+\.[\w.]+", t)}
    assert emails <= {"email@example.com"}
    for name, meta in report["sources"].items():
        tokens, offsets = open_split(Path(meta["uri"]), "train")
        assert len(tokens) == offsets[-1] == meta["train"]["n_tokens"]
        if meta["train"]["n_docs"] + meta["val"]["n_docs"] >= 2:
            assert meta["val"]["n_docs"] >= 1, name
        assert tokens[offsets[1] - 1] == meta["eos_id"]  # end-of-document token after each document
    assert set(report["languages"]) <= {"en", "fr", "es", "de", "it", "pt"}


def test_mlflow_has_parent_and_child_runs_with_metrics_artifacts_datasets(first_run):
    parent = mlflow.get_run(first_run.mlflow_run_id)
    assert parent.data.tags.get("prefect.flow_run_id")
    child = mlflow.get_run(first_run.curate.mlflow_run_id)
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.metrics["extract.docs_in"] == first_run.curate.funnel[0]["docs_in"]
    assert not [m for m in child.data.metrics if m.startswith("dropped.")]  # a table: curation/drops.json
    table = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=child.info.run_id, artifact_path="curation/drops.json")).read_text())
    drops = {(row[0], row[1]): row[2] for row in table["data"]}
    assert table["columns"][:3] == ["step", "reason", "documents"] and drops[("dedup", "exact_duplicate")] == 1
    assert child.data.params["curate.language.threshold"] == "0.65"
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(child.info.run_id, "curation")}
    assert {"curation/funnel.png", "curation/dropped.parquet", "curation/corpus.json", "curation/funnel.json", "curation/drops.json"} <= names
    contexts = {i.tags[0].value for i in child.inputs.dataset_inputs}
    assert contexts == {"raw", "curated"}


def test_rerun_with_nothing_changed_does_no_work(first_run, store):
    before = manifests(store)
    files = sorted(first_run.curate.corpus.path.glob("dataset/data/*.parquet"))
    written = [f.stat().st_mtime_ns for f in files]
    again = pipeline(tiny())
    assert again.curate.corpus == first_run.curate.corpus
    assert manifests(store) == before
    assert files and [f.stat().st_mtime_ns for f in files] == written  # the dataset is not rewritten


def test_one_changed_threshold_reruns_that_step_and_what_follows(first_run, store):
    before = manifests(store)
    changed = pipeline(tiny(*["curate.quality.fineweb.line_punct_thr=0.2"]))
    after = manifests(store)
    new_kinds = {kind for kind, _ in set(after) - set(before)}
    assert "extracted" not in new_kinds and "language" not in new_kinds
    assert {"quality", "corpus"} <= new_kinds
    assert all(after[k] == v for k, v in before.items())  # nothing earlier was rewritten
    assert changed.curate.corpus.key != first_run.curate.corpus.key


def test_deleted_or_corrupted_artifact_is_recomputed(first_run, store):
    language = sorted(store.root.glob("language/*"))[0]
    shutil.rmtree(language)
    report = json.loads((Path(first_run.curate.corpus.uri) / "corpus.json").read_text())
    tokenizer = Path(report["tokenizer"])
    (tokenizer / "tokenizer.json").write_text("{}")
    before = manifests(store)
    again = pipeline(tiny())
    after = manifests(store)
    assert (language / "manifest.json").exists() and store.problem("tokenizer", tokenizer.name) is None
    recomputed = {k for k in after if k not in before or after[k] != before[k]}
    assert recomputed == {("language", language.name), ("tokenizer", tokenizer.name)}
    assert again.curate.corpus == first_run.curate.corpus


def test_glob_matching_nothing_fails_before_any_work(session_home, sample_corpus, store):
    before = manifests(store)
    with pytest.raises(ConfigError, match=r"source 'web': path 'nothing/\*\.html' matched no files"):
        pipeline(tiny(*["curate.sources.0.path=nothing/*.html"]))
    assert manifests(store) == before


def test_later_run_deduplicates_against_an_earlier_corpus(first_run, session_home, sample_corpus):
    """The modern-spelling plays failed quality in the first run, so they are new to its index;
    with that rule off they come back and are kept, while the plays seen before are dropped."""
    key = first_run.curate.corpus.key
    overrides = [
        f"curate.dedup.against=[{key}]",
        "curate.sources=[{name: books, kind: text, path: 'text/*.txt', language: en}]",
        "curate.quality.gopher_quality=null",
    ]
    result = pipeline(tiny(*overrides))
    drops = result.curate.drops["dedup"]
    assert drops["duplicate_of_index"] >= 4
    kept = next(r for r in result.curate.funnel if r["step"] == "dedup")["docs_out"]
    assert kept >= 1


def test_unknown_index_is_a_config_error(session_home, sample_corpus):
    with pytest.raises(ConfigError, match="curate.dedup.against: 'nope'"):
        pipeline(tiny(*["curate.dedup.against=[nope]"]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_the_flow_runs_and_the_mlflow_runs(first_run, session_home):
    """`smolforge ui` starts both servers on this project's stores; the runs above are visible."""
    ports = [_free_port(), _free_port()]
    proc = subprocess.Popen(
        [sys.executable, "-m", "smolforge.cli", "ui", "--prefect-port", str(ports[0]), "--mlflow-port", str(ports[1])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"},
    )
    try:
        lines = []
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and not any(line.startswith("MLflow UI") for line in lines):
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line)
        output = "".join(lines)
        if proc.poll() is not None:
            output += proc.stdout.read() + "".join(p.read_text() for p in (session_home / "logs").glob("*.log"))
        assert f"http://127.0.0.1:{ports[0]}" in output and f"http://127.0.0.1:{ports[1]}" in output, output
        prefect_api = f"http://127.0.0.1:{ports[0]}/api"
        flows = _post(f"{prefect_api}/flow_runs/filter", {"limit": 50})
        names = {f["name"] for f in flows}
        assert names, "no flow runs visible"
        pipeline_run = next(f for f in flows if f["id"] == mlflow.get_run(first_run.mlflow_run_id).data.tags["prefect.flow_run_id"])
        assert pipeline_run["state_type"] == "COMPLETED"
        tasks = _post(f"{prefect_api}/task_runs/filter", {"limit": 200})
        assert len(tasks) > 20
        runs = _post(
            f"http://127.0.0.1:{ports[1]}/api/2.0/mlflow/runs/search",
            {"experiment_ids": [mlflow.get_run(first_run.mlflow_run_id).info.experiment_id], "max_results": 50},
        )["runs"]
        assert first_run.curate.mlflow_run_id in {r["info"]["run_id"] for r in runs}
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[1]}/", timeout=10) as page:
            assert page.status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert not (session_home / "ui.json").exists()


def _post(url: str, body: dict):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())
