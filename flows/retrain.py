"""Recurring retraining: new data in, a better model out only if it is better.

    champion base ─┐
    raw files ─ diff against the champion's corpora ─ curate the new and changed files only
        (their near-duplicates of every earlier corpus dropped, tokenized with the champion's tokenizer)
    ─ new documents + replay of the earlier corpora ─ continued pretraining from the champion's weights
    ─ fine-tuning ─ evaluation ─ the promotion gate

Every step is the pipeline's own cached task or flow, so a retrain that crashed resumes and one
that was rejected costs only a gate call when offered again. Nothing new in the sources: the flow
ends early, Completed with "no new data", and trains nothing. Runs on a schedule as it runs by
hand (`smolforge run retrain`): the diff is always against the champion of the moment.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import flow
from prefect.states import Completed

from smolforge import tracking
from smolforge.artifacts import ArtifactRef, find_artifact
from smolforge.environment import project_home
from smolforge.errors import ConfigError
from smolforge.flows.config import PipelineConfig
from smolforge.flows.curate import curate
from smolforge.flows.evaluate import evaluate
from smolforge.flows.finetune import finetune
from smolforge.flows.promote import promote_stage
from smolforge.flows.results import (
    CurateResult,
    PipelineResult,
    PretrainInputs,
    PretrainResult,
    Registered,
    RetrainResult,
)
from smolforge.model_source import ModelSourceError, registry_version, resolve
from smolforge.runtime import Runtime
from smolforge.tasks.curate.incremental import (
    FileDiff,
    diff_files,
    file_table,
    forget_index,
    link_files,
    updated_table,
)
from smolforge.tasks.curate.prefect_tasks import sample_corpus_task
from smolforge.tasks.curate.replay import Replay, ReplayError, replay_sources
from smolforge.tasks.curate.sources import discover
from smolforge.tasks.promote.registry import tag_version
from smolforge.tasks.registry.register import register_model
from smolforge.tasks.train.config import RetrainConfig
from smolforge.tasks.train.continued import CORPORA, NEW, continued_section, replay_name, retrain_data
from smolforge.tasks.train.data import CorpusSources
from smolforge.tasks.train.prefect_tasks import plan_pretraining, pretrain_stage

NO_NEW_DATA = "no new data"


class RetrainError(ConfigError):
    """A retrain that cannot start: no champion, its corpora gone, a tokenizer that does not match."""


def _champion(config: PipelineConfig, rcfg: RetrainConfig) -> tuple[str, dict[str, str]]:
    """(`models:/name/version` of the model to continue from, its version's tags)."""
    spec = rcfg.start or f"models:/{config.pretrain.register_as}@champion"
    try:
        version = registry_version(spec)
    except ModelSourceError as exc:
        if rcfg.start is None:
            raise RetrainError(
                f"{config.pretrain.register_as} has no champion yet ({exc}): run the pipeline first "
                "(smolforge run pipeline), or name a starting model in retrain.start"
            ) from None
        raise RetrainError(f"retrain.start: {exc}") from None
    if version is None:
        raise RetrainError(f"retrain.start={spec!r}: name a registry version (models:/name@alias or models:/name/version)")
    return f"models:/{version.name}/{version.version}", dict(version.tags)


def _lineage(tags: dict[str, str], start: str, store) -> tuple[ArtifactRef, list[ArtifactRef]]:
    """(what the starting model was trained on, the corpora of its lineage, oldest first)."""
    key = tags.get("smolforge.corpus_key")
    if key is None:
        raise RetrainError(f"{start} has no smolforge.corpus_key tag: it was not pretrained by this project, so there is no corpus to diff against")
    trained_on = find_artifact(store, key)
    if trained_on is None:
        raise RetrainError(f"{start} was trained on corpus {key}, which is not in this project's artifact store ({store.location})")
    keys = json.loads((trained_on.path / CORPORA).read_text(encoding="utf-8")) if (trained_on.path / CORPORA).is_file() else [key]
    corpora = []
    for k in keys:
        ref = store.get("corpus", k)
        if ref is None:
            raise RetrainError(f"{start}'s lineage names corpus {k}, which is not complete in {store.location}")
        corpora.append(ref)
    return trained_on, corpora


def _folder(kind: str, uri: str) -> ArtifactRef:
    """The artifact a corpus record names by its folder (`<store>/<kind>/<key>`)."""
    return ArtifactRef(kind=kind, key=Path(uri).name, uri=uri)


def _replay(corpora: list[ArtifactRef], table: dict, diff: FileDiff, tokenizer: Path, start: str, runtime: Runtime) -> Replay:
    """Each earlier corpus's packed sources in the champion's tokens, without the documents of
    files changed or deleted since."""
    try:
        return replay_sources(corpora, table, diff.forgotten(), tokenizer, runtime)
    except ReplayError as exc:
        raise RetrainError(f"retrain from {start}: {exc} (set retrain.replay_corpora to leave older corpora out)") from None


def _delta_config(config: PipelineConfig, folders: dict[str, Path], tokenizer: Path, index: ArtifactRef) -> PipelineConfig:
    """Curation of just the linked new and changed files, with the champion's tokenizer, against
    the earlier corpora's index; the sections after curation are left out (the flow checks the
    config it is given, and pretraining's mixtures name sources that may have nothing new)."""
    cfg = config.curate
    sources = [s.model_copy(update={"path": str(folders[s.name])}) for s in cfg.sources if s.name in folders]
    delta = cfg.model_copy(
        update={
            "sources": sources,
            "sample_corpus": None,
            "tokenizer": cfg.tokenizer.model_copy(update={"pretrained": str(tokenizer)}),
            "dedup": cfg.dedup.model_copy(update={"against": [str(index.path / "dedup_index")]}),
        }
    )
    alone = {name: None for name in ("pretrain", "distill", "finetune", "sweep", "merge", "evaluate", "promote", "retrain")}
    return config.model_copy(update={"curate": delta, **alone})


def _follow_up(config: PipelineConfig, rcfg: RetrainConfig) -> PipelineConfig:
    """The stages after continued pretraining: fine-tuning (for `finetune_steps`), evaluation (of
    `evaluate_tasks`) and the gate; no distillation, sweep or merge."""
    finetune_cfg = config.finetune
    if rcfg.finetune_steps is not None:
        finetune_cfg = finetune_cfg.model_copy(update={"steps": rcfg.finetune_steps})
    evaluate_cfg = config.evaluate.model_copy(update={"tasks": list(rcfg.evaluate_tasks)})
    return config.model_copy(update={"distill": None, "sweep": None, "merge": None, "finetune": finetune_cfg, "evaluate": evaluate_cfg})


def _check_sections(config: PipelineConfig) -> RetrainConfig:
    missing = [s for s in ("pretrain", "finetune", "evaluate", "promote") if getattr(config, s) is None]
    if missing:
        raise RetrainError(f"retrain runs pretraining, fine-tuning, evaluation and promotion again, but {', '.join(missing)} is null")
    return config.retrain or RetrainConfig()


@flow(name="retrain", log_prints=True)
def retrain(config: PipelineConfig, upstream: PipelineResult | None = None, parent_run_id: str | None = None):
    """Retrain from the champion on what is new in the sources; see the module docstring."""
    import mlflow

    started = time.perf_counter()
    rcfg = _check_sections(config)
    runtime = config.runtime()
    start, tags = _champion(config, rcfg)
    trained_on, corpora = _lineage(tags, start, runtime.store)
    table = file_table(trained_on, runtime.store)
    cfg = config.curate
    data_dir = cfg.data_folder(project_home())
    if cfg.sample_corpus is not None:
        sample_corpus_task(str(data_dir), cfg.sample_corpus.scale)
    diff = diff_files({s.name: discover(s, data_dir) for s in cfg.sources}, table)
    counts = diff.counts()
    if rcfg.replay_corpora is not None:
        corpora = corpora[-rcfg.replay_corpora :]
    print(f"retrain from {start.removeprefix('models:/')}: files " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    lineage_tags = {"smolforge.retrain.from": start.removeprefix("models:/"), "smolforge.retrain.files": json.dumps(counts)}
    with tracking.run("retrain", config.tracking.experiment, parent_run_id, tags=lineage_tags) as run:
        run_id = run.info.run_id
        tracking.log_params({"retrain": rcfg.model_dump(mode="json")})
        mlflow.log_metrics({f"files.{k}": v for k, v in counts.items()})
        result = RetrainResult(
            status=NO_NEW_DATA, start=start, files=counts, corpora=[c.key for c in corpora], mlflow_run_id=run_id
        )
        if not diff.to_read():
            tracking.set_tags({"smolforge.retrain.status": NO_NEW_DATA})
            print(f"retrain: {NO_NEW_DATA} (nothing new or changed in {', '.join(s.name for s in cfg.sources)}); nothing trained")
            result.seconds = round(time.perf_counter() - started, 1)
            return Completed(message=NO_NEW_DATA, data=result)

        champion = resolve(start, None, config.runtime(run_id), "retrain.start")
        champion_tokenizer = champion.path / "model"
        replay = _replay(corpora, table, diff, champion_tokenizer, start, runtime)
        result.repacked = replay.repacked
        repacked_tags = {"smolforge.retrain.repacked": json.dumps(replay.repacked, sort_keys=True)} if replay.repacked else {}
        tracking.set_tags(repacked_tags)
        index = forget_index(corpora, sorted(diff.forgotten()), runtime)
        folders = link_files(diff.to_read(), runtime.store.root / ".work" / "retrain" / index.key)
        delta = curate(_delta_config(config, folders, champion_tokenizer, index), None, run_id)
        record = json.loads((delta.corpus.path / "corpus.json").read_text(encoding="utf-8"))
        result.new_corpus = delta.corpus.key
        if delta.corpus.manifest()["metrics"]["documents"] == 0:
            message = f"{NO_NEW_DATA}: every document of the {counts['new'] + counts['changed']} new and changed files was dropped by curation"
            tracking.set_tags({"smolforge.retrain.status": NO_NEW_DATA})
            print(f"retrain: {message}; nothing trained")
            result.seconds = round(time.perf_counter() - started, 1)
            return Completed(message=message, data=result)

        new = {f"{NEW}{source}": _folder("tokens", entry["uri"]) for source, entry in record["sources"].items()}
        replayed = {replay_name(source, key): ref for key, packed in replay.sources.items() for source, ref in packed.items()}
        lineage = [*corpora, delta.corpus]
        data = retrain_data(
            {**new, **replayed}, _folder("tokenizer", record["tokenizer"]), updated_table(table, diff, delta.corpus.key), lineage,
            replay.repacked, cfg.dataset, runtime,
        )
        result.data = data
        data_sources = CorpusSources.from_corpus_json(data.path)
        try:
            (stage,) = plan_pretraining(continued_section(config.pretrain, rcfg, data_sources), data_sources)
        except ValueError as exc:
            raise RetrainError(f"retrain: {exc}") from None
        print(stage.plan.describe())
        model = pretrain_stage(data, champion, 0, stage.config, stage.rates, stage.start, config.runtime(run_id))
        version_tags = {
            **lineage_tags,
            "smolforge.corpus_key": data.key,
            "smolforge.retrain.new_corpus": delta.corpus.key,
            "smolforge.retrain.replayed": ",".join(c.key for c in corpora),
            "smolforge.retrain.replay_share": str(rcfg.replay_share),
            **repacked_tags,
        }
        registered = register_model(model, config.pretrain.register_as, version_tags)
        metrics = model.manifest()["metrics"]
        done = PipelineResult(mlflow_run_id=run_id)
        done.curate = CurateResult(
            corpus=data, funnel=delta.funnel, drops=delta.drops, timings=delta.timings, mlflow_run_id=delta.mlflow_run_id,
            seconds=delta.seconds, cached=delta.cached,
        )
        done.pretrain = PretrainResult(
            model=model, inputs=PretrainInputs(corpus=data), stages=[metrics], registered=Registered(**registered),
            mlflow_run_id=metrics.get("mlflow_run_id"), seconds=metrics.get("seconds", 0.0),
        )
        follow = _follow_up(config, rcfg)
        done.finetune = finetune(follow, done, run_id)
        chat = done.finetune.registered
        tag_version(chat.name, chat.version, {k: v for k, v in version_tags.items() if k != "smolforge.corpus_key"})
        done.evaluate = evaluate(follow, done, run_id)
        done.promote = promote_stage(follow, done, run_id)
        tracking.set_tags({"smolforge.retrain.status": "retrained"})
        result.status, result.stages = "retrained", done
        result.seconds = round(time.perf_counter() - started, 1)
    return result
