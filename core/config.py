"""Typed configuration: one strict pydantic model per stage, composed into `PipelineConfig`.

Presets are YAML files beside this module; `--set a.b.c=value` overrides are applied to the raw
mapping before validation, so a bad value fails before any work starts and the error names the
field, the value and what was expected.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from smolforge.models.config import ModelConfig, MTPConfig, OptimizerConfig
from smolforge.strict import Strict, require_unique
from smolforge.tasks.distill.config import DistillConfig
from smolforge.tasks.finetune.config import FinetuneConfig
from smolforge.tasks.sweep.config import SweepConfig
from smolforge.tasks.train.config import PretrainConfig

PRESETS_DIR = Path(__file__).parent / "presets"
SMOLLM3_LANGUAGES = ["en", "fr", "es", "de", "it", "pt"]


class ConfigError(ValueError):
    """A configuration that cannot run; the message is meant for the user as is."""


class SourceConfig(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Source name, used in ids and shard names.")
    kind: Literal["html", "pdf", "text", "jsonl", "warc"] = Field(description="How files are read.")
    path: str = Field(description="File, folder or glob; relative paths resolve against `curate.data_dir`.")
    language: str | None = Field(
        None, description="ISO 639-1 code if the source is known to be in one language: identification is skipped."
    )


class SampleCorpusConfig(Strict):
    scale: int = Field(1, ge=1, le=100, description="Multiplies the number of documents taken from each package.")


class ExtractConfig(Strict):
    max_chars: int = Field(1_000_000, gt=0, description="Documents longer than this (characters) are dropped as too_large.")
    min_chars: int = Field(20, ge=1, description="Extracted texts shorter than this (characters) are dropped.")
    ocr: bool = Field(True, description="Route PDFs without a text layer to OCR when the `ocr` extra is installed.")
    text_field: str = Field("text", description="Field holding the text in JSONL records.")
    files_per_shard: int = Field(16, ge=1, description="Files per unit of parallel work.")


class LanguageConfig(Strict):
    keep: list[str] = Field(default_factory=lambda: list(SMOLLM3_LANGUAGES), min_length=1, description="Languages kept (ISO 639-1).")
    threshold: float = Field(0.65, ge=0, le=1, description="Minimum fastText lid.176 score (FineWeb: 0.65).")


class GopherRepetitionConfig(Strict):
    """Gopher repetition rules (Rae et al. 2021, table A1); datatrove's defaults are FineWeb's."""

    dup_line_frac: float | None = Field(0.3, ge=0, le=1)
    dup_para_frac: float | None = Field(0.3, ge=0, le=1)
    dup_line_char_frac: float | None = Field(0.2, ge=0, le=1)
    dup_para_char_frac: float | None = Field(0.2, ge=0, le=1)


class GopherQualityConfig(Strict):
    min_doc_words: int | None = Field(50, ge=0)
    max_doc_words: int | None = Field(100_000, ge=1)
    min_avg_word_length: int | None = Field(3, ge=0)
    max_avg_word_length: int | None = Field(10, ge=1)
    max_symbol_word_ratio: float | None = Field(0.1, ge=0)
    max_bullet_lines_ratio: float | None = Field(0.9, ge=0, le=1)
    max_ellipsis_lines_ratio: float | None = Field(0.3, ge=0, le=1)
    max_non_alpha_words_ratio: float | None = Field(0.8, ge=0, le=1)
    min_stop_words: int | None = Field(2, ge=0)


class C4Config(Strict):
    """C4 line and document rules; FineWeb turns the terminal-punctuation line rule off."""

    filter_no_terminal_punct: bool = False
    min_num_sentences: int = Field(5, ge=0)
    min_words_per_line: int = Field(3, ge=0)
    max_word_length: int = Field(1000, ge=1)
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True


class FineWebRulesConfig(Strict):
    line_punct_thr: float = Field(0.12, ge=0, le=1, description="Min fraction of lines ending in punctuation.")
    short_line_thr: float = Field(0.67, ge=0, le=1, description="Max fraction of lines shorter than short_line_length.")
    short_line_length: int = Field(30, ge=1, description="Characters.")
    char_duplicates_ratio: float = Field(0.01, ge=0, le=1, description="Max fraction of characters in duplicated lines.")
    new_line_ratio: float = Field(0.3, ge=0, le=1, description="Max newlines per word.")


class QualityConfig(Strict):
    """Each rule set may be set to null to turn it off."""

    gopher_repetition: GopherRepetitionConfig | None = Field(default_factory=GopherRepetitionConfig)
    gopher_quality: GopherQualityConfig | None = Field(default_factory=GopherQualityConfig)
    c4: C4Config | None = Field(default_factory=C4Config)
    fineweb: FineWebRulesConfig | None = Field(default_factory=FineWebRulesConfig)


class PIIConfig(Strict):
    emails: bool = True
    ips: bool = True
    email_replacement: str = "email@example.com"
    ip_replacement: str = "0.0.0.0"


class DedupConfig(Strict):
    exact: bool = Field(True, description="Drop documents whose normalised text was already seen.")
    minhash: bool = Field(True, description="Drop MinHash near-duplicates (LSH over word n-grams).")
    ngram: int = Field(5, ge=1, description="Words per shingle (FineWeb: 5).")
    buckets: int = Field(14, ge=1, description="LSH bands (FineWeb: 14).")
    hashes_per_bucket: int = Field(8, ge=1, description="Hashes per band (FineWeb: 8).")
    against: list[str] = Field(
        default_factory=list,
        description="Earlier dedup indexes (artifact keys or folders) whose documents count as already seen.",
    )
    seed: int = 1


class TokenizerConfig(Strict):
    pretrained: str | None = Field(None, description="Use this tokenizer folder or hub id instead of training one.")
    vocab_size: int = Field(8192, ge=300, le=1_000_000, description="Target vocabulary of the trained byte-level BPE.")
    min_frequency: int = Field(2, ge=1)


class PackConfig(Strict):
    val_fraction: float = Field(0.05, ge=0, lt=1, description="Share of each source's documents held out.")
    seed: int = 0


class CurateConfig(Strict):
    sources: list[SourceConfig] = Field(min_length=1)
    data_dir: str | None = Field(None, description="Root for relative source paths (default: the sample corpus folder).")
    sample_corpus: SampleCorpusConfig | None = Field(
        None, description="Assemble the offline sample corpus into data_dir before curating."
    )
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    language: LanguageConfig = Field(default_factory=LanguageConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    pii: PIIConfig = Field(default_factory=PIIConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    pack: PackConfig = Field(default_factory=PackConfig)

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        require_unique([s.name for s in sources], "source names")
        return sources


class ExecutionConfig(Strict):
    runner: Literal["local", "dask"] = Field("local", description="Prefect task runner: threads here, or a Dask cluster.")
    workers: int = Field(0, ge=0, description="Processes for CPU-bound steps; 0 means all cores.")
    dask_address: str | None = Field(None, description="Scheduler address; none starts a local Dask cluster.")

    def cpu_workers(self) -> int:
        return self.workers or os.cpu_count() or 1


class TrackingConfig(Strict):
    experiment: str = Field("smolforge", min_length=1, description="MLflow experiment name.")


class PretrainSection(PretrainConfig):
    """Three-stage pretraining (SmolLM3 style): the stages and their loop settings, plus the model,
    the multi-token-prediction heads, the optimizer and the registry name of the result."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    mtp: MTPConfig = Field(default_factory=MTPConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    register_as: str = Field("smolforge-base", min_length=1, description="Registered model name in MLflow.")
    sample_prompts: list[str] = Field(
        default_factory=lambda: ["The river", "Le roi", "def main"], description="Prompts whose continuations are logged."
    )


class PipelineConfig(Strict):
    preset: str | None = Field(None, description="Preset this config was built from (informational).")
    curate: CurateConfig
    pretrain: PretrainSection | None = Field(None, description="Pretraining after curation; null stops after curation.")
    distill: DistillConfig | None = Field(None, description="Distillation of the pretrained model into a smaller student.")
    finetune: FinetuneConfig | None = Field(None, description="Instruction/chat fine-tuning (LoRA, QLoRA or full).")
    sweep: SweepConfig | None = Field(None, description="An Optuna sweep over one stage's settings.")
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _data_dir_needed(self) -> PipelineConfig:
        relative = [s.name for s in self.curate.sources if not Path(s.path).is_absolute()]
        if relative and self.curate.data_dir is None and self.curate.sample_corpus is None:
            raise ValueError(
                f"sources {relative} have relative paths but neither curate.data_dir nor curate.sample_corpus is set"
            )
        if self.pretrain is not None:
            names = {s.name for s in self.curate.sources}
            for i, stage in enumerate(self.pretrain.stages):
                unknown = sorted(set(stage.mixture) - names)
                if unknown:
                    raise ValueError(
                        f"pretrain.stages.{i}.mixture names {unknown}, which are not curate sources "
                        f"(the corpus will have: {sorted(names)})"
                    )
        if self.distill is not None:
            names = {s.name for s in self.curate.sources}
            unknown = sorted(set(self.distill.data.mixture) - names)
            if unknown:
                raise ValueError(
                    f"distill.data.mixture names {unknown}, which are not curate sources (the corpus will have: {sorted(names)})"
                )
            if self.distill.teacher is None and self.pretrain is None:
                raise ValueError("distill.teacher is null (the pretrained model) but pretrain is null: set one of them")
        return self


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `dotted.path=value` in place; the value is parsed as YAML (`0.8`, `null`, `[en, fr]`)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like section.field=value")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {assignment!r}: cannot parse value {raw!r}: {exc}") from None
    node: Any = data
    for i, key in enumerate(keys[:-1]):
        where = ".".join(keys[: i + 1])
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"override {dotted}: {where} is not an index of a list of {len(node)} items")
            node = node[int(key)]
        else:
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
    last = keys[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"override {dotted}: {last} is not an index of a list of {len(node)} items")
        node[int(last)] = value
    else:
        node[last] = value


def describe_errors(error: ValidationError) -> str:
    """A validation error as one line per problem, each naming the setting, the value and what was expected."""
    lines = []
    for err in error.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if not err["loc"] or err["type"] == "value_error" and isinstance(err["input"], dict):
            # a rule across several fields: the message itself names them
            prefix = f"{where}: " if err["loc"] else ""
            lines.append(prefix + err["msg"].removeprefix("Value error, "))
        elif err["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown setting (value {err['input']!r})")
        elif err["type"] == "missing":
            lines.append(f"{where}: required setting is missing")
        else:
            lines.append(f"{where}: got {err['input']!r}, expected: {err['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_config(
    preset: str | None = None, config_file: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> PipelineConfig:
    """Preset, then a YAML file merged over it, then `--set` overrides; validated once at the end."""
    data: dict[str, Any] = {}
    if preset:
        path = PRESETS_DIR / f"{preset}.yaml"
        if not path.exists():
            raise ConfigError(f"unknown preset {preset!r}; available: {', '.join(available_presets())}")
        data = _read_yaml(path)
        data["preset"] = preset
    if config_file:
        data = _merge(data, _read_yaml(Path(config_file)))
    for assignment in overrides:
        apply_override(data, assignment)
    if not data:
        raise ConfigError("no configuration: pass --preset or --config")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc)) from None
