"""Pretraining settings: stages with their data mixtures, one learning-rate schedule across them,
loss-spike handling and checkpoints.

Torch-free on purpose: configs are validated (and presets listed) before any heavy import, and a
bad value fails with the field, the value and what was expected before any work starts.

The model, multi-token-prediction and optimizer settings live in `smolforge.models.config`;
`PretrainSection` (the `pretrain` section of the pipeline config) composes them with `PretrainConfig`.

Units used below: a *step* is one optimizer update; a *sequence* is one row of `seq_len` input
tokens; a step sees `batch_size * grad_accum` sequences, that is
`batch_size * grad_accum * seq_len` tokens (the tokens that are predicted, not counting the one
extra token a window reads for its last target).

The defaults are sized for the tiny preset: about 110 steps of 2,048 tokens over three stages (a
few minutes on a 2-core CPU for a model of a few million parameters, at 1-2 s a step), on the
sample corpus's five sources.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from smolforge.models.config import ModelConfig, MTPConfig, OptimizerConfig
from smolforge.strict import Strict, require_unique


class StageConfig(Strict):
    """One training stage: a budget and the mixture of corpus sources it reads.

    SmolLM3 trains in three stages whose mixtures shift towards higher-quality data (more code and
    math, later reasoning data); the learning-rate schedule runs across all of them (see
    `ScheduleConfig`), so a stage changes only what is read, not the optimizer.
    """

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]*$",
        description="Stage name, used in logs, metrics and the data sampler's seeds (changing it changes the batches).",
    )
    tokens: int | None = Field(
        None, gt=0, description="Budget in training tokens; rounded up to whole steps. Set this or `steps`."
    )
    steps: int | None = Field(None, gt=0, description="Budget in optimizer steps. Set this or `tokens`.")
    mixture: dict[str, float] = Field(
        min_length=1,
        description=(
            "Weight per corpus source name (share of this stage's sequences); normalised to sum to 1. "
            "A weight of 0 keeps the source listed but unread."
        ),
    )
    seq_len: int = Field(256, ge=2, description="Tokens per training sequence (the context length) in this stage.")

    @field_validator("mixture")
    @classmethod
    def _normalised_mixture(cls, mixture: dict[str, float]) -> dict[str, float]:
        bad = {name: w for name, w in mixture.items() if not math.isfinite(w) or w < 0}
        if bad:
            raise ValueError(f"mixture weights must be finite and >= 0; got {bad}")
        total = sum(mixture.values())
        if total <= 0:
            raise ValueError(f"mixture weights must sum to more than 0; got {mixture}")
        return {name: w / total for name, w in mixture.items()}

    @model_validator(mode="after")
    def _one_budget(self) -> StageConfig:
        if (self.tokens is None) == (self.steps is None):
            raise ValueError(
                f"stage {self.name!r} needs exactly one budget, `tokens` or `steps`; got tokens={self.tokens}, steps={self.steps}"
            )
        return self


class ScheduleConfig(Strict):
    """Warmup-stable-decay (WSD) learning rate, one schedule over all stages.

    The rate rises linearly over `warmup_steps`, stays at the peak (the optimizer's learning rate),
    then decays to `min_lr_ratio` of the peak by the end of training. Unlike cosine, the stable
    phase does not need the run length in advance, and a run can branch off before the decay.
    SmolLM3 decays linearly to 0 over roughly the last 10% of its steps, about its third stage.
    """

    warmup_steps: int = Field(20, ge=0, description="Optimizer steps of linear warmup from the start of the first stage.")
    decay_fraction: float | None = Field(
        None,
        ge=0,
        le=1,
        description=(
            "Share of all steps, at the end, over which the rate decays (0.1 = the last 10%; 0 = no decay). "
            "None: the decay spans the whole last stage (SmolLM3-like)."
        ),
    )
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Rate at the end of the decay, as a fraction of the peak.")
    decay_shape: Literal["linear", "sqrt", "cosine"] = Field(
        "linear",
        description="Decay curve: linear (SmolLM3), sqrt ('1 - sqrt', Hägele et al. 2024) or cosine (half period).",
    )


class StabilityConfig(Strict):
    """Guards against loss spikes: gradient clipping, and rolling back to the last checkpoint
    whose loss was verified, with a lower rate and without the batches that led to the spike (the
    recipe PaLM and OLMo describe)."""

    clip_norm: float | None = Field(1.0, gt=0, description="Clip the global gradient L2 norm to this; None: no clipping.")
    spike_factor: float = Field(
        2.0,
        gt=1,
        description=(
            "A step's loss above this many times the running average counts as a spike. Tiny batches are "
            "noisy, hence 2; lower it for large batches."
        ),
    )
    spike_window: int = Field(
        20,
        ge=1,
        description=(
            "Steps the running average spans: an exponential moving average with weight 1/spike_window per "
            "step; spikes are looked for only once this many steps have fed it."
        ),
    )
    lr_backoff: float = Field(
        0.5, gt=0, le=1, description="After each rollback the learning rate is multiplied by this (cumulatively)."
    )
    skip_batches: int = Field(
        0,
        ge=0,
        description=(
            "After a rollback the data position moves past the spike: the batches from the restored checkpoint "
            "up to and including the spike step are never used again, plus this many more steps' batches."
        ),
    )
    max_rollbacks: int = Field(3, ge=0, description="Rollbacks allowed in a run; one more spike stops training with an error.")


class CheckpointConfig(Strict):
    every_steps: int = Field(50, ge=1, description="Save a checkpoint every this many optimizer steps (and at each stage end).")
    keep: int = Field(
        3, ge=1, description="Newest checkpoints kept; the newest verified-good one is kept too, so rollback has a target."
    )


def _tiny_stages() -> list[StageConfig]:
    """Three stages over the tiny preset's sources, shifting weight from books to chat and the small
    sources like SmolLM3's stages shift towards code and math. On the scale-1 sample corpus no source
    is read more than about twice over the run (the smallest, `crawl`, has about 1,700 train
    tokens: six sequences of 256)."""
    return [
        StageConfig(
            name="stable",
            tokens=120_000,
            mixture={"books": 0.825, "chat": 0.1, "web": 0.04, "pdfs": 0.03, "crawl": 0.005},
        ),
        StageConfig(
            name="mix", tokens=60_000, mixture={"books": 0.69, "chat": 0.2, "web": 0.06, "pdfs": 0.04, "crawl": 0.01}
        ),
        StageConfig(
            name="decay", tokens=36_000, mixture={"books": 0.58, "chat": 0.3, "web": 0.06, "pdfs": 0.04, "crawl": 0.02}
        ),
    ]


class PretrainConfig(Strict):
    """Everything about a pretraining run except the model and optimizer, which are composed beside it."""

    stages: list[StageConfig] = Field(
        default_factory=_tiny_stages,
        min_length=1,
        description="Stages in training order (SmolLM3 has three). The defaults name the tiny preset's sources.",
    )
    batch_size: int = Field(8, ge=1, description="Sequences per micro-batch (one forward and backward pass).")
    grad_accum: int = Field(
        1, ge=1, description="Micro-batches per optimizer step; a step sees batch_size * grad_accum sequences."
    )
    max_epochs: float = Field(
        4.0,
        gt=0,
        description=(
            "Most times any source may be read over the whole run (all stages). Past about 4 epochs repeated "
            "tokens are worth much less than fresh ones (Muennighoff et al. 2023); planning refuses more."
        ),
    )
    schedule: ScheduleConfig = Field(
        default_factory=ScheduleConfig, description="Warmup-stable-decay learning rate, one schedule over all stages."
    )
    stability: StabilityConfig = Field(
        default_factory=StabilityConfig,
        description="Gradient clipping and loss-spike rollbacks to the last good checkpoint.",
    )
    checkpoint: CheckpointConfig = Field(
        default_factory=CheckpointConfig, description="How often checkpoints are saved (optimizer steps) and how many are kept."
    )
    eval_every: int = Field(25, ge=1, description="Evaluate on the validation batches every this many optimizer steps.")
    eval_batches: int = Field(4, ge=1, description="Validation batches per source at each evaluation (the same ones every time).")
    log_every: int = Field(5, ge=1, description="Log training metrics every this many optimizer steps.")
    seed: int = Field(0, ge=0, description="Seeds initialisation, dropout and the data order.")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="auto: cuda, else mps, else cpu.")
    compile: bool = Field(
        False,
        description=(
            "Compile the training forward and loss with torch.compile (inductor; needs a C++ compiler on CPU). "
            "Steps get faster (1.2-2x measured on CPU) after 10-60 s of compiling: worth it for runs of more "
            "than a few minutes. Evaluation and generation stay eager."
        ),
    )
    nproc: int = Field(
        1,
        ge=1,
        description=(
            "Data-parallel processes on this node, started with torchrun (one per GPU; gloo on CPU). "
            "1 trains in the task's own process. The global batch stays batch_size * grad_accum."
        ),
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="Compute dtype; auto: bfloat16 where the device supports it well (cuda), else float32."
    )

    @field_validator("stages")
    @classmethod
    def _unique_stage_names(cls, stages: list[StageConfig]) -> list[StageConfig]:
        require_unique([s.name for s in stages], "stage names")
        return stages

    @property
    def sequences_per_step(self) -> int:
        return self.batch_size * self.grad_accum


class PretrainSection(PretrainConfig):
    """Three-stage pretraining (SmolLM3 style): the stages and their loop settings, plus the model,
    the multi-token-prediction heads, the optimizer and the registry name of the result."""

    model: ModelConfig = Field(default_factory=ModelConfig, description="The architecture: a preset shape plus overrides.")
    mtp: MTPConfig = Field(
        default_factory=MTPConfig, description="Multi-token-prediction heads (training only; not in the exported model)."
    )
    optimizer: OptimizerConfig = Field(
        default_factory=OptimizerConfig, description="AdamW, or Muon for the 2-D hidden matrices, and the peak learning rate."
    )
    register_as: str = Field("smolforge-base", min_length=1, description="Registered model name in MLflow.")
    sample_prompts: list[str] = Field(
        default_factory=lambda: ["The river", "Le roi", "def main"], description="Prompts whose continuations are logged."
    )


class RetrainConfig(Strict):
    """Recurring retraining (`smolforge run retrain`): curate only the files that are new or changed
    since the champion's corpora, continue pretraining the champion on them mixed with replay of the
    earlier corpora, fine-tune, evaluate, and put both through the promotion gate."""

    start: str | None = Field(
        None,
        description="Model to continue from (models:/name@alias, models:/name/version); null: the base model's `champion`.",
    )
    replay_share: float = Field(
        0.25, ge=0, le=0.9, description="Share of the continued pretraining's sequences taken from earlier corpora (against forgetting)."
    )
    new_data_epochs: float = Field(2.0, gt=0, description="Times the new documents are read when the budget is set from them.")
    steps: int | None = Field(None, gt=0, description="Optimizer steps of continued pretraining; null: from the new data (see new_data_epochs).")
    min_steps: int = Field(10, ge=1, description="Fewest optimizer steps when the budget is set from the new data.")
    max_steps: int = Field(200, ge=1, description="Most optimizer steps when the budget is set from the new data.")
    warmup_steps: int = Field(5, ge=0, description="Re-warmup steps before the rate decays over the rest of the stage.")
    lr_scale: float = Field(0.5, gt=0, le=1, description="Peak learning rate as a fraction of pretraining's.")
    finetune_steps: int | None = Field(None, gt=0, description="Fine-tuning steps on the continued model; null: finetune.steps.")
    evaluate_tasks: list[str] = Field(
        default_factory=lambda: ["perplexity", "chat"],
        min_length=1,
        description=(
            "Evaluation tasks of the retrained models and of the champions evaluated again on the new held-out data: "
            "the default gates read perplexity's bits_per_byte and chat's loss and ROUGE-L; add lm_eval for the full table."
        ),
    )
    replay_corpora: int | None = Field(None, ge=1, description="Replay only the most recent N earlier corpora; null: all of them.")

    @model_validator(mode="after")
    def _step_range(self) -> RetrainConfig:
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps ({self.min_steps}) is above max_steps ({self.max_steps})")
        return self
