"""What a retrain replays: every earlier corpus's packed sources, in the champion's own tokens.

Replay reads tokens as they were packed, so it reads only sources packed with the champion's
tokenizer (the same fingerprint, see `incremental.tokenizer_fingerprint`). A corpus packed with
another tokenizer is packed again from its curated documents, the deduplicated shards its packing
step read, by curation's own packing step with the champion's tokenizer. That tokenizer enters the
step as an artifact keyed by its fingerprint, so the re-packed source's key is its documents' keys
plus the fingerprint (and the packing settings): every later retrain whose champion has the same
tokenizer reads it from the cache. Token ids are never mapped from one vocabulary to the other:
two BPEs of one size share ids, not what the ids spell. Only when the curated documents are gone
is such a corpus refused, naming both tokenizers and what is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from smolforge.artifacts import ArtifactRef, ArtifactStore, local_folder
from smolforge.errors import ConfigError
from smolforge.runtime import Runtime
from smolforge.tasks.curate.config import PackConfig
from smolforge.tasks.curate.incremental import FileTable, file_id, select_packed, tokenizer_fingerprint
from smolforge.tasks.curate.prefect_tasks import pack_task
from smolforge.tasks.curate.tokenizer import load_tokenizer

TOKENIZER = "tokenizer"


class ReplayError(ConfigError):
    """An earlier corpus that can be neither replayed as it is nor re-packed."""


@dataclass
class Replay:
    """The packed sources to replay, by corpus key then source name, and the corpora that had to be
    re-packed: corpus key -> {"from": its tokenizer's fingerprint (None when that tokenizer's
    folder is gone), "to": the champion's}."""

    sources: dict[str, dict[str, ArtifactRef]] = field(default_factory=dict)
    repacked: dict[str, dict[str, str | None]] = field(default_factory=dict)


def adopt_tokenizer(folder: Path, runtime: Runtime) -> ArtifactRef:
    """The tokenizer saved in `folder` (a model's, say) as a `tokenizer` artifact whose key is its
    fingerprint: steps that take it are keyed by what the tokenizer is, not by the folder it came
    from, so the champions of a lineage that share one tokenizer share what was packed with it."""
    fingerprint = tokenizer_fingerprint(folder)
    store = runtime.store
    existing = store.get(TOKENIZER, fingerprint)
    if existing is not None:
        return existing
    with store.write(TOKENIZER, fingerprint, step="adopt_tokenizer", config={"adopted_from": str(folder)}) as (tmp, metrics):
        tok = load_tokenizer(str(folder))
        tok.save_pretrained(tmp)
        saved = tokenizer_fingerprint(tmp)
        if saved != fingerprint:  # the artifact would be filed under a key that is not its own
            raise ReplayError(f"the tokenizer of {folder} (fingerprint {fingerprint}) saves as {saved}: it cannot be adopted")
        metrics.update({"vocab_size": len(tok), "fingerprint": fingerprint})
    return store.ref(TOKENIZER, fingerprint)


@dataclass
class CuratedDocuments:
    """What a packed source was made from: the source name, its deduplicated shards (by reference,
    whether or not they are still in the store) and its packing settings."""

    source: str
    shards: list[ArtifactRef]
    cfg: PackConfig

    def missing(self, store: ArtifactStore) -> list[str]:
        return [f"{s.kind}/{s.key}" for s in self.shards if store.get(s.kind, s.key) is None]


def curated_documents(packed: ArtifactRef, store: ArtifactStore) -> CuratedDocuments:
    """The curated documents a packed source was made from, read from its manifest (ReplayError
    when that manifest is gone)."""
    try:
        config = packed.manifest()["config"]
        shards = [store.ref(s["artifact"], s["key"]) for s in config["shards"]]
        return CuratedDocuments(config["source"], shards, PackConfig.model_validate(config["cfg"]))
    except (OSError, ValueError, KeyError, TypeError):
        raise ReplayError(
            f"its packed source {packed.kind}/{packed.key} has no readable manifest naming its curated documents ({packed.path})"
        ) from None


def _fingerprint(folder: str) -> str | None:
    """The fingerprint of the tokenizer a corpus was packed with; None when its folder is gone (the
    corpus is then re-packed: whatever it was, the champion's tokens are what replay must read)."""
    try:
        return tokenizer_fingerprint(local_folder(folder))  # a remote store's tokenizer through its local copy
    except (OSError, ValueError):
        return None


def _packed(record: dict) -> dict[str, ArtifactRef]:
    """A corpus record's packed sources, by name."""
    return {source: ArtifactRef(kind="tokens", key=Path(e["uri"]).name, uri=e["uri"]) for source, e in record["sources"].items()}


def replay_sources(
    corpora: list[ArtifactRef], table: FileTable, forgotten: set[str], champion_tokenizer: Path, runtime: Runtime
) -> Replay:
    """Each earlier corpus's packed sources in the champion's tokens (re-packed where another
    tokenizer made them), without the documents of the files in `forgotten` (`source/rel` ids of
    files changed or deleted since) that `table` says the corpus holds. Every corpus is checked
    before anything is packed, so a refusal leaves nothing half done; a re-pack already in the cache
    is used even when the documents it was made from are gone."""
    champion = tokenizer_fingerprint(champion_tokenizer)
    by_key = runtime.store.ref(TOKENIZER, champion)  # the adopted tokenizer's reference: its key is all a step's key reads
    records = {c.key: json.loads((c.path / "corpus.json").read_text(encoding="utf-8")) for c in corpora}
    replay = Replay()
    documents: dict[str, dict[str, CuratedDocuments]] = {}
    for key, record in records.items():
        found = _fingerprint(record["tokenizer"])
        if found == champion:
            continue
        try:
            documents[key] = {source: curated_documents(ref, runtime.store) for source, ref in _packed(record).items()}
            for docs in documents[key].values():
                missing = [] if pack_task.existing(docs.source, docs.shards, by_key, docs.cfg, runtime) else docs.missing(runtime.store)
                if missing:
                    raise ReplayError(
                        f"the curated documents of its source {docs.source} ({len(missing)} of {len(docs.shards)} shards: "
                        f"{', '.join(missing)}) are missing from {runtime.store.root}"
                    )
        except ReplayError as exc:
            raise ReplayError(
                f"corpus {key} was packed with tokenizer {found or 'unknown (its folder is gone)'} ({record['tokenizer']}), "
                f"not the champion's {champion} ({champion_tokenizer}), and cannot be re-packed: {exc}"
            ) from None
        replay.repacked[key] = {"from": found, "to": champion}

    adopted = adopt_tokenizer(champion_tokenizer, runtime) if documents else None
    for key, record in records.items():
        sources = replay.sources.setdefault(key, {})
        for source, packed in _packed(record).items():
            if key in documents:
                docs = documents[key][source]
                packed = pack_task(docs.source, docs.shards, adopted, docs.cfg, runtime)
            owned = {file_id(source, rel) for rel, f in table.get(source, {}).items() if f["corpus"] == key}
            drop = sorted(forgotten & owned)
            sources[source] = select_packed(packed, drop, runtime) if drop else packed
    return replay
