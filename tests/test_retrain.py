"""Recurring retraining on the session's tiny pipeline (whose `promote: {}` made the champions):
new, changed and deleted files in a copy of the sample corpus, one retrain from the champion, then
a second one that finds nothing new."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_pack import make_docs
from transformers import AutoModelForCausalLM

from smolforge import tracking
from smolforge.artifacts import ArtifactRef, find_artifact
from smolforge.flows.config import load_config
from smolforge.flows.retrain import NO_NEW_DATA, RetrainError, retrain
from smolforge.runtime import Runtime
from smolforge.tasks.curate import pack
from smolforge.tasks.curate.config import DatasetConfig, PackConfig
from smolforge.tasks.curate.documents import write_docs
from smolforge.tasks.curate.incremental import corpus_file_table, tokenizer_fingerprint
from smolforge.tasks.curate.pack import open_split
from smolforge.tasks.curate.prefect_tasks import pack_task
from smolforge.tasks.curate.replay import ReplayError, adopt_tokenizer, replay_sources
from smolforge.tasks.curate.sample_corpus import later_articles
from smolforge.tasks.curate.tokenizer import load_tokenizer, train_tokenizer
from smolforge.tasks.promote.registry import aliases
from smolforge.tasks.registry.lineage import artifact_lineage
from smolforge.tasks.train.continued import replay_name, retrain_data
from smolforge.tasks.train.stage import tensors_hash

pytestmark = pytest.mark.slow

NAMES = ("smolforge-base", "smolforge-chat")
EDITED, DELETED = "boilerplate_blog.html", "boilerplate_news.html"  # both kept by the first curation


def _changed_copy(sample_corpus: Path, dest: Path) -> list[str]:
    """The sample corpus with three new web pages, one edited and one deleted: the new pages' paths
    relative to the web source's folder (`html/`)."""
    shutil.copytree(sample_corpus, dest)
    pages = later_articles(3)
    for name, page in pages:
        (dest / "html" / name).write_text(page, encoding="utf-8")
    edited = dest / "html" / EDITED
    edited.write_text(edited.read_text(encoding="utf-8").replace("<p>", "<p>A paragraph added after the first corpus was curated.</p>\n<p>", 1), encoding="utf-8")
    (dest / "html" / DELETED).unlink()
    return [name for name, _ in pages]


def _ids(folder: Path) -> set[str]:
    return {json.loads(line) for split in ("train", "val") for line in (folder / f"{split}.ids.jsonl").read_text().splitlines()}


def _versions(name: str) -> int:
    return len(tracking.client().search_model_versions(f"name='{name}'"))


@pytest.fixture()
def restored_aliases(tiny_pipeline):
    """Later modules read the pipeline's champions: put the aliases back as they were."""
    before = {name: aliases(name) for name in NAMES}
    yield before
    client = tracking.client()
    for name, held in before.items():
        for alias in set(aliases(name)) - set(held):
            client.delete_registered_model_alias(name, alias)
        for alias, version in held.items():
            client.set_registered_model_alias(name, alias, version)


def test_a_retrain_reads_only_what_changed_starts_from_the_champion_and_then_finds_nothing_new(
    tiny_pipeline, sample_corpus, tmp_path, restored_aliases
):
    new_pages = _changed_copy(sample_corpus, tmp_path / "data")
    config = load_config("tiny", overrides=[f"curate.data_dir={tmp_path / 'data'}", "curate.sample_corpus=null"])
    store = config.runtime().store
    champion = restored_aliases["smolforge-base"]["champion"]

    result = retrain(config)

    assert result.status == "retrained" and result.start == f"models:/smolforge-base/{champion}"
    assert result.repacked == {}  # the lineage has one tokenizer: the corpus is replayed as it was packed
    assert {k: result.files[k] for k in ("new", "changed", "deleted")} == {"new": 3, "changed": 1, "deleted": 1}
    # only the new and the changed files were extracted: the new corpus knows no other file
    delta = store.get("corpus", result.new_corpus)
    assert corpus_file_table(delta, store).keys() == {"web"}
    assert sorted(corpus_file_table(delta, store)["web"]) == sorted([*new_pages, EDITED])
    # training started from the champion's own weights
    version = tracking.client().get_model_version("smolforge-base", champion)
    weights = find_artifact(store, version.tags["smolforge.artifact_key"]).path / "model"
    init = result.stages.pretrain.stages[0]["init"]
    assert init["tensors"] == tensors_hash(AutoModelForCausalLM.from_pretrained(weights))
    # the edited file's old documents left the replay, its new version is among the new documents
    record = json.loads((result.data.path / "corpus.json").read_text())
    replayed = set().union(*(_ids(Path(s["uri"])) for n, s in record["sources"].items() if not n.startswith("new.")))
    fresh = set().union(*(_ids(Path(s["uri"])) for n, s in record["sources"].items() if n.startswith("new.")))
    assert f"web/{EDITED}" in fresh and f"web/{EDITED}" not in replayed and f"web/{DELETED}" not in replayed
    assert f"web/{EDITED}" in _ids(Path(json.loads((tiny_pipeline.curate.corpus.path / "corpus.json").read_text())["sources"]["web"]["uri"]))
    assert {f"web/{name}" for name in new_pages} <= fresh
    # its dataset holds the documents it trains on, each corpus's part sorted; the stage logged it as its input
    rows = pq.read_table(result.data.path / "dataset" / "data").select(["id", "source"]).to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(replayed | fresh)
    parts = [rows[: len(rows) - len(fresh)], rows[len(rows) - len(fresh) :]]  # the earlier corpus, then the new one
    assert all([(r["source"], r["id"]) for r in part] == sorted((r["source"], r["id"]) for r in part) for part in parts)
    stage_run = tracking.client().get_run(result.stages.pretrain.stages[0]["mlflow_run_id"])
    assert [i.dataset.name for i in stage_run.inputs.dataset_inputs] == ["retrain-corpus"]
    # both new versions say where they came from; the gate decided on each
    for registered in (result.stages.pretrain.registered, result.stages.finetune.registered):
        tags = tracking.client().get_model_version(registered.name, registered.version).tags
        assert tags["smolforge.retrain.from"] == f"smolforge-base/{champion}"
        assert tags["smolforge.retrain.new_corpus"] == result.new_corpus
        assert tags["smolforge.retrain.replayed"] == tiny_pipeline.curate.corpus.key
        assert tags["promotion"] in ("promoted", "rejected"), tags
        assert "smolforge.retrain.repacked" not in tags
    assert {d["name"] for d in result.stages.promote.decisions} == set(NAMES)
    assert tracking.client().get_model_version("smolforge-base", result.stages.pretrain.registered.version).tags[
        "smolforge.corpus_key"
    ] == result.data.key

    # nothing new since (against whichever champion the gate left): ends early, trains nothing
    versions = {name: _versions(name) for name in NAMES}
    config = load_config("tiny", overrides=[
        f"curate.data_dir={tmp_path / 'data'}", "curate.sample_corpus=null",
        f"retrain.start=models:/smolforge-base/{result.stages.pretrain.registered.version}",
    ])
    state = retrain(config, return_state=True)
    assert state.is_completed() and state.message == NO_NEW_DATA
    again = state.result()
    assert again.status == NO_NEW_DATA and again.files["new"] == again.files["changed"] == 0 and again.stages is None
    assert {name: _versions(name) for name in NAMES} == versions


def test_a_retrain_without_a_champion_says_to_run_the_pipeline_or_name_a_start(tiny_pipeline):
    with pytest.raises(RetrainError, match=r"nobody-base has no champion yet .*run the pipeline first .*or name a starting model in retrain.start"):
        retrain(load_config("tiny", overrides=["pretrain.register_as=nobody-base"]))
    with pytest.raises(RetrainError, match=r"retrain.start: models:/smolforge-base/99: smolforge-base has no version '99'"):
        retrain(load_config("tiny", overrides=["retrain.start=models:/smolforge-base/99"]))


def _doc_tokens(folder: Path) -> dict[str, list[int]]:
    """Each document's tokens in a packed folder, without the eos that closes it."""
    found = {}
    for split in ("train", "val"):
        tokens, offsets = open_split(folder, split)
        for i, doc_id in enumerate(json.loads(line) for line in (folder / f"{split}.ids.jsonl").read_text().splitlines()):
            found[doc_id] = tokens[offsets[i] : offsets[i + 1] - 1].tolist()
    return found


def _made(ref: ArtifactRef) -> tuple[int, int]:
    """(folder inode, manifest mtime): both change when an artifact is written again."""
    return ref.path.stat().st_ino, (ref.path / "manifest.json").stat().st_mtime_ns


def _bpes(folder: Path, names: tuple[str, ...]) -> dict[str, Path]:
    """BPEs of one vocabulary size, each trained on other text."""
    found = {}
    for seed, name in enumerate(names):
        found[name] = folder / name
        texts = (d.text.upper() if seed % 2 else d.text for d in make_docs(200, seed=seed))
        train_tokenizer(texts, vocab_size=300, out_dir=found[name])
    return found


def _corpus_packed_with(tokenizer: Path, runtime: Runtime) -> tuple[ArtifactRef, ArtifactRef, dict[str, str]]:
    """(a corpus of one source packed by curation's packing step with `tokenizer`, its curated
    documents' shard, their texts by id)."""
    store = runtime.store
    docs = make_docs(40, seed=7, source="books")
    with store.write("deduped", "d0c5" * 8, step="dedup_shard") as (out, _):
        write_docs(docs, out / "docs.parquet")
    shard = store.ref("deduped", "d0c5" * 8)
    packed = pack_task.fn("books", [shard], adopt_tokenizer(tokenizer, runtime), PackConfig(), runtime)
    with store.write("corpus", "c0ffee" * 4, step="corpus_task") as (out, _):
        meta = packed.manifest()["metrics"]
        tokens = meta["train"]["n_tokens"] + meta["val"]["n_tokens"]
        record = {"sources": {"books": {"uri": packed.uri, **meta}}, "tokenizer": str(tokenizer), "funnel": [], "tokens": tokens}
        (out / "corpus.json").write_text(json.dumps(record))  # the fields curation's corpus step records that replay and lineage read
    return store.ref("corpus", "c0ffee" * 4), shard, {d.id: d.text for d in docs}


def test_a_corpus_packed_with_another_tokenizer_is_replayed_re_packed_from_its_documents_then_from_the_cache(tmp_path):
    runtime = Runtime(root=str(tmp_path / "artifacts"))
    store = runtime.store
    bpes = _bpes(tmp_path, ("theirs", "champion"))
    ours = load_tokenizer(str(bpes["champion"]))
    corpus, _, originals = _corpus_packed_with(bpes["theirs"], runtime)
    packed = Path(json.loads((corpus.path / "corpus.json").read_text())["sources"]["books"]["uri"])
    edited = "books/file3.txt"  # a file changed since: its documents leave the replay
    table = {"books": {rel.removeprefix("books/"): {"xxh3": "0", "corpus": corpus.key} for rel in originals}}

    replay = replay_sources([corpus], table, {edited}, bpes["champion"], runtime)

    fingerprints = {name: tokenizer_fingerprint(folder) for name, folder in bpes.items()}
    assert replay.repacked == {corpus.key: {"from": fingerprints["theirs"], "to": fingerprints["champion"]}}
    replayed = replay.sources[corpus.key]["books"]
    tokens = _doc_tokens(replayed.path)
    assert tokens.keys() == originals.keys() - {edited}
    assert all(ours.decode(ids) == originals[doc_id] for doc_id, ids in tokens.items())
    # the tokens as packed read as other text under the champion's tokenizer: replaying them as they are is what this prevents
    assert sum(ours.decode(ids) != originals[doc_id] for doc_id, ids in _doc_tokens(packed).items()) > len(originals) / 2
    # the edited file's documents were taken out of the re-pack, which the champion's tokenizer (by fingerprint) made
    repack = store.get("tokens", pack.read_meta(replayed.path)["selected_from"])
    assert {"kind": "tokenizer", "key": fingerprints["champion"]} in repack.manifest()["inputs"]
    assert _doc_tokens(repack.path).keys() == originals.keys()
    made = _made(repack)

    # the next retrain, its champion's tokenizer saved in another folder: the re-pack comes from the cache
    elsewhere = tmp_path / "next-champion"
    ours.save_pretrained(elsewhere)
    again = replay_sources([corpus], table, {edited}, elsewhere, runtime)
    assert again.sources == replay.sources and again.repacked == replay.repacked
    assert _made(repack) == made

    # the retrain's data says which corpus was re-packed, with which tokenizer; its lineage shows it
    data = retrain_data(
        {replay_name("books", corpus.key): replayed}, store.ref("tokenizer", fingerprints["champion"]), table, [corpus],
        replay.repacked, DatasetConfig(), runtime,
    )
    assert artifact_lineage(store, data)["repacked"] == replay.repacked


def test_a_corpus_whose_curated_documents_are_gone_is_refused_naming_both_tokenizers_unless_its_re_pack_is_cached(tmp_path):
    runtime = Runtime(root=str(tmp_path / "artifacts"))
    store = runtime.store
    bpes = _bpes(tmp_path, ("theirs", "ours", "third"))
    corpus, shard, _ = _corpus_packed_with(bpes["theirs"], runtime)

    first = replay_sources([corpus], {}, set(), bpes["ours"], runtime)
    shutil.rmtree(shard.path)  # the curated documents are gone
    assert replay_sources([corpus], {}, set(), bpes["ours"], runtime).sources == first.sources  # the re-pack was cached
    with pytest.raises(ReplayError) as refused:
        replay_sources([corpus], {}, set(), bpes["third"], runtime)
    message = str(refused.value)
    assert f"corpus {corpus.key} was packed with tokenizer {tokenizer_fingerprint(bpes['theirs'])} ({bpes['theirs']})" in message
    assert f"not the champion's {tokenizer_fingerprint(bpes['third'])} ({bpes['third']})" in message
    assert f"the curated documents of its source books (1 of 1 shards: deduped/{shard.key}) are missing from {store.root}" in message
    assert store.get("tokenizer", tokenizer_fingerprint(bpes["third"])) is None  # refused before anything was written
