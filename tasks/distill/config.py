"""Distillation settings: which teacher, which (smaller) student, the loss mix and the data.

Torch-free like the other stage configs, so a bad value fails at validation with the field named.
The data reuse pretraining's own pieces: `data` is a pretraining `StageConfig` (a budget, a mixture
over the corpus's sources and a sequence length), planned and sampled by `tasks/train/data.py`, and
the learning rate follows the same warmup-stable-decay `ScheduleConfig`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from smolforge.models.config import ModelConfig, OptimizerConfig
from smolforge.strict import Strict
from smolforge.tasks.train.config import ScheduleConfig, StageConfig


def _default_data() -> StageConfig:
    return StageConfig(
        name="distill",
        steps=150,
        seq_len=128,
        mixture={"books": 0.7, "chat": 0.2, "web": 0.05, "pdfs": 0.03, "crawl": 0.02},
    )


def _default_student() -> ModelConfig:
    return ModelConfig(preset="tiny", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=192)


class DistillConfig(Strict):
    """Knowledge distillation (Hinton et al. 2015) from a teacher into a smaller student.

    loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, next token),
    where `_T` is the softmax of logits / T. The T^2 keeps the soft term's gradients on the same
    scale as the hard term's whatever T is, so alpha means the same thing at every temperature.
    """

    teacher: str | None = Field(
        None,
        min_length=1,
        description=(
            "The teacher: null = the model the pipeline's pretrain stage made; otherwise a registry URI "
            "(models:/smolforge-base@candidate), a local transformers folder (or an artifact folder holding "
            "model/), or a Hugging Face hub id (needs network or the local hub cache)."
        ),
    )
    student: ModelConfig = Field(
        default_factory=_default_student, description="Shape of the student; it must have fewer parameters than the teacher."
    )
    temperature: float = Field(2.0, gt=0, le=100, description="Softmax temperature T of both distributions in the KL term.")
    alpha: float = Field(
        0.9, ge=0, le=1, description="Weight of the distillation (KL) term; 1 - alpha weighs next-token cross-entropy."
    )
    top_k: int | None = Field(
        None,
        ge=1,
        description=(
            "Store the teacher's top-k log-probabilities per position once, as a `teacher-topk` artifact, and "
            "distil from them (KL over the teacher's top-k support, renormalised) instead of running the "
            "teacher in every step. Null: the full teacher distribution, the teacher running beside the student."
        ),
    )
    data: StageConfig = Field(
        default_factory=_default_data,
        description="Budget (steps or tokens), mixture over the corpus's sources and seq_len, planned like a pretraining stage.",
    )
    batch_size: int = Field(8, ge=1, description="Sequences per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_epochs: float = Field(4.0, gt=0, description="Most times any source may be read; planning refuses more.")
    optimizer: OptimizerConfig = Field(
        default_factory=lambda: OptimizerConfig(lr=3e-3),
        description="The student's optimizer (AdamW or Muon) and its peak learning rate (3e-3 by default: a small student).",
    )
    schedule: ScheduleConfig = Field(
        default_factory=lambda: ScheduleConfig(warmup_steps=10, decay_fraction=0.2),
        description="Warmup-stable-decay learning rate over the distillation steps.",
    )
    clip_norm: float | None = Field(1.0, gt=0, description="Clip the global gradient L2 norm to this; null: no clipping.")
    eval_every: int = Field(25, ge=1, description="Evaluate the student's validation loss every this many optimizer steps.")
    eval_batches: int = Field(4, ge=1, description="Validation batches per source at each evaluation (the same ones every time).")
    log_every: int = Field(10, ge=1, description="Log training metrics every this many optimizer steps.")
    seed: int = Field(0, ge=0, description="Seeds the student's initialisation and the data order.")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="auto: cuda, else mps, else cpu.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="Compute dtype; auto: bfloat16 where the device supports it well (cuda), else float32."
    )
    register_as: str = Field("smolforge-student", min_length=1, description="Registered model name in MLflow.")
