"""The same curation on a local Dask cluster (prefect-dask) gives the same corpus as the default runner."""

import pytest

from smolforge.flows.config import load_config
from smolforge.flows.curate import curate
from smolforge.runners import task_runner_for

pytestmark = pytest.mark.slow


def _run(runner: str, sample_corpus, home, monkeypatch):
    monkeypatch.setenv("SMOLFORGE_HOME", str(home))  # a fresh artifact store: every step really runs
    cfg = load_config(
        "tiny",
        overrides=[
            "pretrain=null",
            "distill=null",
            "finetune=null",
            "merge=null",
            "evaluate=null",
            "promote=null",
            f"curate.data_dir={sample_corpus}",
            "curate.sample_corpus=null",
            "curate.sources=[{name: chat, kind: jsonl, path: 'jsonl/*.jsonl'}, {name: web, kind: html, path: 'html/boilerplate_*.html'}]",
            "curate.extract.files_per_shard=8",
            f"execution.runner={runner}",
            "execution.workers=2",
        ],
    )
    return curate.with_options(task_runner=task_runner_for(cfg.execution))(cfg)


def test_dask_runner_matches_local_runner(sample_corpus, tmp_path, monkeypatch):
    on_dask = _run("dask", sample_corpus, tmp_path / "dask", monkeypatch)
    local = _run("local", sample_corpus, tmp_path / "local", monkeypatch)
    assert on_dask.funnel == local.funnel
    assert on_dask.corpus.key == local.corpus.key
    assert on_dask.funnel[0]["docs_in"] > 20
