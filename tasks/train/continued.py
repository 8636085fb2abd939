"""Continued pretraining for a retrain: the data it reads and the one stage that reads it.

The data is a corpus record like curation's (`corpus.json`), so the training code reads it
unchanged: the new documents' packed sources (`new.<source>`) beside the earlier corpora's
(`<source>.<corpus key prefix>`), the tokenizer they share, the file table the next retrain diffs
against and the corpora it replays; its `dataset/` holds the documents of the corpora's datasets
that it trains on (the replayed ones without the documents of files changed or deleted since).
The stage mixes the new data with a share of replay, the usual guard against forgetting what the
earlier corpora taught, and re-warms the learning rate before it decays over the stage.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from smolforge.artifacts import ArtifactRef
from smolforge.runtime import Runtime
from smolforge.steps import artifact_step
from smolforge.tasks.curate import dataset, dataset_card
from smolforge.tasks.curate.config import DatasetConfig
from smolforge.tasks.curate.incremental import FILES, FileTable
from smolforge.tasks.train.config import PretrainSection, RetrainConfig, StageConfig
from smolforge.tasks.train.data import CorpusSources

NEW = "new."  # prefix of the new documents' sources
CORPORA = "corpora.json"  # the corpus artifacts a retrain's data was drawn from, oldest first
STAGE = "continue"


def replay_name(source: str, corpus_key: str) -> str:
    return f"{source}.{corpus_key[:8]}"


@artifact_step("retrain-data", code=(Path(dataset.__file__), Path(dataset_card.__file__)))
def retrain_data(
    out: Path,
    sources: dict[str, ArtifactRef],
    tokenizer: ArtifactRef,
    files: FileTable,
    corpora: list[ArtifactRef],
    repacked: dict[str, dict[str, str | None]],
    cfg: DatasetConfig,
    runtime: Runtime,
) -> dict[str, Any]:
    """The corpus record a retrain trains and evaluates on, with the lineage the next one reads, and
    the documents it trains on as a dataset (each corpus's that `files` says it still holds);
    `repacked` names the corpora whose documents were packed again with the champion's tokenizer
    (corpus key -> {"from": their own tokenizer's fingerprint, "to": the champion's})."""
    keys = [c.key for c in corpora]
    entries = {name: {"uri": ref.uri, **ref.manifest()["metrics"]} for name, ref in sources.items()}
    record = {"sources": entries, "tokenizer": tokenizer.uri, "corpora": keys, "repacked": repacked}
    (out / "corpus.json").write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    (out / FILES).write_text(json.dumps(files, sort_keys=True), encoding="utf-8")
    (out / CORPORA).write_text(json.dumps(keys), encoding="utf-8")
    parts = [(c.key, c.path / dataset.FOLDER, files) for c in corpora]
    profile = dataset.select_dataset(out / dataset.FOLDER, parts, cfg.max_file_mb, cfg.row_group_mb)
    title = "smolforge retrain corpus: " + ", ".join(sorted(profile["sources"]))
    dataset_card.write_card(out / dataset.FOLDER, profile, title)
    tokens = {name: e.get("train", {}).get("n_tokens", 0) for name, e in entries.items()}
    return {
        "new_tokens": sum(n for name, n in tokens.items() if name.startswith(NEW)),
        "replay_tokens": sum(n for name, n in tokens.items() if not name.startswith(NEW)),
        "files": sum(len(f) for f in files.values()),
        "documents": profile["rows"],
    }


def continued_section(base: PretrainSection, rcfg: RetrainConfig, sources: CorpusSources) -> PretrainSection:
    """`base` (the pipeline's pretraining settings) cut down to one stage over `sources`.

    The new sources share `1 - replay_share` of the sequences and the replayed ones the rest, each
    group split by its sources' train tokens. Without `rcfg.steps` the budget reads the new tokens
    `new_data_epochs` times, within [min_steps, max_steps]; when that clamp (or a fixed budget) would
    read them more often, the new share shrinks and replay fills the rest. The sequence length is
    the last pretraining stage's; the rate peaks at `lr_scale` of pretraining's."""
    seq_len = base.stages[-1].seq_len
    per_step = base.sequences_per_step * seq_len
    usable = {name: s.n_tokens("train") for name, s in sources.items() if s.windows(seq_len) > 0}
    new = {name: n for name, n in usable.items() if name.startswith(NEW)}
    replay = {name: n for name, n in usable.items() if not name.startswith(NEW)}
    new_tokens, replay_tokens = sum(new.values()), sum(replay.values())
    if new_tokens == 0:
        raise ValueError(f"the new documents hold no training sequence of {seq_len} tokens (sources: {sorted(sources)})")
    replay_share = rcfg.replay_share if replay else 0.0
    steps = rcfg.steps or min(
        rcfg.max_steps, max(rcfg.min_steps, math.ceil(new_tokens * rcfg.new_data_epochs / ((1 - replay_share) * per_step)))
    )
    if not replay:  # nothing to fill with: read the new tokens at most max_epochs times
        steps = max(1, min(steps, math.floor(new_tokens * base.max_epochs / per_step)))
        new_share = 1.0
    else:
        new_share = min(1 - replay_share, rcfg.new_data_epochs * new_tokens / (steps * per_step))
    mixture = {name: new_share * n / new_tokens for name, n in new.items()}
    mixture |= {name: (1 - new_share) * n / replay_tokens for name, n in replay.items()}
    stage = StageConfig(name=STAGE, steps=steps, seq_len=seq_len, mixture=mixture)
    warmup = min(rcfg.warmup_steps, steps - 1)  # then the rate decays over every step after the warmup
    return base.model_copy(
        update={
            "stages": [stage],
            "schedule": base.schedule.model_copy(update={"warmup_steps": warmup, "decay_fraction": (steps - warmup) / steps}),
            "optimizer": base.optimizer.model_copy(update={"lr": base.optimizer.lr * rcfg.lr_scale}),
        }
    )
