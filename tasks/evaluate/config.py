"""Evaluation settings: which models, which evaluation tasks (by registry name), and each task's
data and budget.

Torch-free like the other stage configs, so a bad value fails at validation with the field named.
Units: lengths are in tokens of the evaluated model's tokenizer unless a field says words; counts
of records, documents or items are counts of held-out units.

Everything that defines the evaluation data (`data` and the tasks' data settings) is part of the
data key, the rest of the evaluation key: every model of a run is scored on the same items.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from smolforge.strict import Strict, require_unique

PIPELINE_MODELS = ("pretrain", "distill", "finetune", "merge")
# The evaluation tasks that exist, named here (torch-free) so a typo in `evaluate.tasks` is refused
# when the config loads; the registry (`registry.evaluation_task`) registers only these names.
EVALUATION_TASKS = ("perplexity", "chat", "lm_eval")


class PerplexitySettings(Strict):
    """Loss, perplexity and bits per byte on each corpus source's held-out (`val`) documents."""

    seq_len: int = Field(256, ge=8, description="Tokens per window; a longer document is cut into windows.")
    batch_size: int = Field(8, ge=1, description="Windows per forward pass.")
    max_docs: int = Field(64, ge=1, description="Held-out documents per source read (the first ones of the split).")
    max_words: int = Field(50_000, ge=1, description="Words per source at most (whitespace-separated; the last document is cut).")


class ChatSettings(Strict):
    """Held-out instruction and chat answers: loss on the assistant's tokens, generated answers scored."""

    max_records: int = Field(64, ge=1, description="Held-out records whose assistant-token loss is measured.")
    generate: int = Field(16, ge=0, description="Held-out records answered by greedy generation and scored.")
    max_new_tokens: int = Field(48, ge=1, description="Tokens generated per answer.")
    batch_size: int = Field(8, ge=1, description="Records per forward pass of the loss.")
    samples: int = Field(8, ge=0, description="Generated answers logged beside their references.")


class LmEvalSettings(Strict):
    """lm-evaluation-harness tasks: two written from held-out passages, plus any the user names."""

    cloze_items: int = Field(200, ge=100, description="Items of the generated multiple-choice cloze (>= 100).")
    cuts_per_passage: int = Field(2, ge=1, description="Cut points per passage of a held-out document (items per passage).")
    context_words: int = Field(48, ge=4, description="Words before the cut (the question); a passage is this plus twice continuation_words.")
    continuation_words: int = Field(8, ge=1, description="Words of each of the four choices after the cut.")
    rolling_docs: int = Field(16, ge=1, description="Held-out documents scored by the loglikelihood_rolling task.")
    rolling_words: int = Field(400, ge=8, description="Words of each rolling document at most (a play is long).")
    include_path: list[str] = Field(
        default_factory=list,
        description="Folders of your own lm-eval task YAMLs (absolute, or relative to the working directory); "
        "their tasks run only when named in `tasks`.",
    )
    tasks: list[str] = Field(
        default_factory=list,
        description="More lm-eval task names: from `include_path`, or standard tasks (need the hub or its cache).",
    )
    limit: int | None = Field(None, ge=1, description="Items per lm-eval task at most; null: all.")
    batch_size: int = Field(8, ge=1, description="lm-eval requests per forward pass.")

    @field_validator("tasks")
    @classmethod
    def _unique(cls, names: list[str]) -> list[str]:
        require_unique(names, "evaluate.lm_eval.tasks")
        return names


class EvaluateConfig(Strict):
    """Evaluation of the pipeline's models (and any others) on held-out data, compared in one table."""

    pipeline_models: list[str] = Field(
        default_factory=lambda: list(PIPELINE_MODELS),
        description=f"Models of this pipeline run to evaluate, by stage ({', '.join(PIPELINE_MODELS)}); a stage "
        "that is not configured is skipped.",
    )
    models: list[str] = Field(
        default_factory=list,
        description="More models: registry URIs (models:/smolforge-chat@champion), transformers folders or hub ids.",
    )
    tasks: list[str] = Field(
        default_factory=lambda: ["perplexity", "chat", "lm_eval"],
        min_length=1,
        description=f"Evaluation tasks to run on every model: {', '.join(EVALUATION_TASKS)}.",
    )
    perplexity: PerplexitySettings = Field(
        default_factory=PerplexitySettings, description="Perplexity and bits per byte per source on the held-out split."
    )
    chat: ChatSettings = Field(
        default_factory=ChatSettings,
        description="Held-out chat records: assistant-token loss; generated answers scored by BLEU, chrF, ROUGE-L, exact match.",
    )
    lm_eval: LmEvalSettings = Field(
        default_factory=LmEvalSettings, description="lm-evaluation-harness: the generated cloze and rolling tasks, plus the user's."
    )
    tag_metrics: list[str] = Field(
        default_factory=lambda: ["bits_per_byte", "chat_loss", "chrf", "cloze_acc"],
        description="Metrics (names in the comparison table) also set as tags on each registered model version.",
    )
    device: str = Field("auto", description="auto (CUDA, then MPS, then CPU), cpu, cuda or mps.")
    seed: int = Field(0, description="Seeds the choice of cloze cut points and distractors.")

    @field_validator("pipeline_models")
    @classmethod
    def _known_stages(cls, names: list[str]) -> list[str]:
        unknown = sorted(set(names) - set(PIPELINE_MODELS))
        if unknown:
            raise ValueError(f"unknown stages {unknown}; models come from: {', '.join(PIPELINE_MODELS)}")
        require_unique(names, "evaluate.pipeline_models")
        return names

    @field_validator("models")
    @classmethod
    def _unique_models(cls, names: list[str]) -> list[str]:
        require_unique(names, "evaluate.models")
        return names

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, names: list[str]) -> list[str]:
        unknown = [t for t in names if t not in EVALUATION_TASKS]
        if unknown:
            raise ValueError(f"no evaluation task {unknown}; available: {', '.join(EVALUATION_TASKS)}")
        require_unique(names, "evaluate.tasks")
        return names

    def data_settings(self) -> EvaluationData:
        """What defines the evaluation data (with the corpus and the records: the data key)."""
        s = self.lm_eval
        return EvaluationData(
            tasks=sorted(self.tasks), perplexity_docs=self.perplexity.max_docs, perplexity_words=self.perplexity.max_words,
            chat_records=self.chat.max_records, cloze_items=s.cloze_items, cuts_per_passage=s.cuts_per_passage, context_words=s.context_words,
            continuation_words=s.continuation_words, rolling_docs=s.rolling_docs, rolling_words=s.rolling_words,
            seed=self.seed,
        )


class EvaluationData(Strict):
    """The settings that shape the held-out sets, copied from `EvaluateConfig` (see its fields)."""

    tasks: list[str]
    perplexity_docs: int
    perplexity_words: int
    chat_records: int
    cloze_items: int
    cuts_per_passage: int
    context_words: int
    continuation_words: int
    rolling_docs: int
    rolling_words: int
    seed: int
