"""The corpus's dataset: what it holds, the three readers that open it, MLflow, and the two commands."""

import json
from pathlib import Path

import datasets
import mlflow
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datatrove.pipeline.readers import ParquetReader
from typer.testing import CliRunner

from smolforge import tracking
from smolforge.artifacts import ArtifactStore
from smolforge.cli import app
from smolforge.tasks.curate import dataset
from smolforge.tasks.curate.dataset_export import find_corpus
from smolforge.tasks.curate.quality import SIGNALS


@pytest.fixture(scope="module")
def corpus(tiny_pipeline):
    return tiny_pipeline.curate.corpus


@pytest.fixture(scope="module")
def frame(corpus) -> pd.DataFrame:
    return pd.read_parquet(corpus.path / "dataset" / "data")


def test_the_dataset_holds_every_kept_document_sorted_with_its_tokens_and_clusters(corpus, frame):
    report = json.loads((corpus.path / "corpus.json").read_text())
    assert len(frame) == report["funnel"][-1]["docs_out"] > 0
    assert list(frame.columns) == dataset.SCHEMA.names and {f"quality_{n}" for n in SIGNALS} <= set(frame.columns)
    assert list(zip(frame.source, frame.id)) == sorted(zip(frame.source, frame.id))
    # every packed document once, its tokens without the end-of-document mark, in the split it went to
    assert int(frame.tokens.sum()) + len(frame) == report["tokens"]
    assert (frame.chars == frame.text.str.len()).all()
    for source in frame.source.unique():
        for split in ("train", "val"):
            ids = (Path(report["sources"][source]["uri"]) / f"{split}.ids.jsonl").read_text().splitlines()
            assert sorted(json.loads(i) for i in ids) == sorted(frame.id[(frame.source == source) & (frame.split == split)])
    # a kept document's cluster size is one more than the duplicates dropped naming it
    drops = pd.read_parquet(corpus.path / "dropped.parquet")
    named = drops[drops.reason.isin(["exact_duplicate", "near_duplicate"])].detail.value_counts()
    assert len(named) > 0  # the sample corpus plants duplicates
    for doc_id, size, cluster in zip(frame.id, frame.minhash_cluster_size, frame.minhash_cluster):
        assert size == 1 + named.get(doc_id, 0)
        assert cluster == doc_id if size > 1 else pd.isna(cluster)
    assert frame.quality_words.gt(0).all() and frame.quality_line_punct_ratio.between(0, 1).all()


def test_datasets_pandas_and_datatrove_read_the_same_documents(corpus, frame, tmp_path):
    files = [str(f) for f in dataset.data_files(corpus.path / "dataset")]
    loaded = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    assert loaded["id"] == frame.id.tolist() and loaded["text"] == frame.text.tolist()
    docs = list(ParquetReader(str(corpus.path / "dataset" / "data"), glob_pattern="*.parquet")())
    assert [d.id for d in docs] == frame.id.tolist() and [d.text for d in docs] == frame.text.tolist()
    assert docs[0].metadata["source"] == frame.source[0] and docs[0].metadata["tokens"] == frame.tokens[0]


def test_the_card_has_the_hub_front_matter_and_the_numbers(corpus, frame):
    card = (corpus.path / "dataset" / "README.md").read_text()
    assert card.startswith("---\n") and 'path: "data/*.parquet"' in card
    profile = dataset.read_profile(corpus.path / "dataset")
    assert profile["rows"] == len(frame) and profile["languages"] == frame.language.value_counts().to_dict()
    assert f"{len(frame):,} documents" in card and "## Counts per step" in card and "gopher" in card  # a drop reason
    assert '"vocab_size"' in card  # the tokenizer's settings are among the steps'


def test_files_and_row_groups_stay_within_their_bounds(tmp_path):
    text = "word " * 20_000  # 100 KB a row
    rows = [{name: None for name in dataset.SCHEMA.names} | {"id": f"s/{i:03d}", "text": text, "source": "s"} for i in range(40)]
    writer = dataset.PartWriter(tmp_path, max_file_mb=1, row_group_mb=1)
    writer.write(pa.Table.from_pylist(rows[:25], schema=dataset.SCHEMA))
    writer.write(pa.Table.from_pylist(rows[25:], schema=dataset.SCHEMA))
    files = writer.close()
    assert [f.name for f in files] == [f"train-0000{i}-of-00004.parquet" for i in range(4)]
    assert pd.read_parquet(tmp_path).id.tolist() == [r["id"] for r in rows]
    for f in files:
        meta = pq.ParquetFile(f).metadata
        assert meta.num_row_groups == 1 and meta.num_rows == 10  # 1 MB of text and ids: 10 rows of 100 KB, not 11


def test_the_curate_run_logs_the_dataset_and_every_training_run_logs_it_as_its_input(tiny_pipeline, corpus):
    client = tracking.client()

    def inputs(run_id):
        return {(i.dataset.name, i.dataset.digest, i.tags[0].value): json.loads(i.dataset.profile or "{}") for i in client.get_run(run_id).inputs.dataset_inputs}

    curated = {k: v for k, v in inputs(tiny_pipeline.curate.mlflow_run_id).items() if k[2] == "curated"}
    ((name, digest, _), profile), = curated.items()
    assert name == "curated-corpus" and profile["num_rows"] == dataset.read_profile(corpus.path / "dataset")["rows"]
    assert set(profile["languages"]) and set(profile["sources"])
    trained = [m["mlflow_run_id"] for m in tiny_pipeline.pretrain.stages]
    trained += [tiny_pipeline.distill.model.manifest()["metrics"]["mlflow_run_id"], tiny_pipeline.finetune.model.manifest()["metrics"]["mlflow_run_id"]]
    for run_id in trained:
        assert any(key[:2] == (name, digest) for key in inputs(run_id)), client.get_run(run_id).info.run_name


def test_latest_is_the_newest_corpus_and_an_unknown_key_lists_the_corpora(tmp_path):
    store = ArtifactStore(tmp_path)
    for key in ("aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"):
        with store.write("corpus", key, step="corpus_task") as (folder, _):
            dataset.write_dataset(folder / "dataset", {}, {}, {}, [], 1, 1)
    assert find_corpus(store, "latest").ref.key == "bbbbbbbbbbbbbbbb"
    assert find_corpus(store, "aaaaaa").ref.key == "aaaaaaaaaaaaaaaa"
    with pytest.raises(dataset.DatasetError, match=r"no corpus 'cccccc' in .*the corpora are: corpus aaaaaaaaaaaaaaaa \(.*0 documents\); corpus bbbb"):
        find_corpus(store, "cccccc")


def _cli(*args):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def test_dataset_show_prints_the_numbers_and_samples_per_source_and_language(corpus, frame):
    done = _cli("dataset", "show", corpus.key, "--samples", "1")
    assert done.exit_code == 0, done.output
    assert f"{len(frame):,} documents" in done.output and "documents per step: extract" in done.output
    for source, language in set(zip(frame.source, frame.language)):
        first = frame[(frame.source == source) & (frame.language == language)].id.iloc[0]
        assert f"{first} ({source}, {language}," in done.output
    unknown = _cli("dataset", "show", "0123456789ab")
    listed = " ".join(unknown.output.split())
    assert unknown.exit_code == 2 and "no corpus '0123456789ab'" in listed and "the corpora are:" in listed and f"corpus {corpus.key} (" in listed


def test_dataset_export_filters_refuses_a_full_folder_and_writes_nothing_for_no_match(corpus, frame, tmp_path):
    dest = tmp_path / "out"
    done = _cli("dataset", "export", corpus.key, str(dest), "--format", "jsonl", "--language", "en")
    assert done.exit_code == 0, done.output
    exported = pd.concat(pd.read_json(f, lines=True) for f in sorted((dest / "data").glob("*.jsonl")))
    assert exported.id.tolist() == frame.id[frame.language == "en"].tolist()
    assert 'path: "data/*.jsonl"' in (dest / "README.md").read_text()

    refused = _cli("dataset", "export", corpus.key, str(dest), "--source", "chat")
    assert refused.exit_code == 2 and "is not empty" in refused.output and "--overwrite" in refused.output
    assert len(list((dest / "data").glob("*.jsonl"))) == 1  # untouched

    replaced = _cli("dataset", "export", corpus.key, str(dest), "--source", "chat", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert not list((dest / "data").glob("*.jsonl"))
    assert pd.read_parquet(dest / "data").id.tolist() == frame.id[frame.source == "chat"].tolist()

    nothing = _cli("dataset", "export", corpus.key, str(tmp_path / "none"), "--source", "chat", "--language", "xx")
    output = " ".join(nothing.output.split())
    assert nothing.exit_code == 2 and "has source 'chat' and language 'xx': nothing written" in output and "its languages" in output
    assert not (tmp_path / "none").exists()


def test_push_to_hub_offline_says_so_after_a_complete_export(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    done = _cli("dataset", "export", corpus.key, str(tmp_path / "hub"), "--push-to-hub", "someone/corpus")
    output = " ".join(done.output.split())
    assert done.exit_code == 2 and "offline (HF_HUB_OFFLINE is set): nothing was uploaded to someone/corpus" in output
    assert "the export in" in output and dataset.data_files(tmp_path / "hub")
