"""Fine-tuning settings: the method (LoRA, QLoRA or full), the adapter, the quantisation, the data
and the loop.

Torch-free like the other stage configs, so a bad value fails at validation with the field named.
What can only be checked against the base model (target modules that exist, a rank no larger than
a layer) is checked by `adapters.check_against_model` before training starts.

Units: a *step* is one optimizer update over `batch_size` records (one record is one rendered
conversation, padded to the longest in its batch); lengths are in tokens of the base's tokenizer.
The sweep stage searches `finetune.lora.r` and `finetune.lr` by these names.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from smolforge.strict import Strict, require_unique

# SmolLM3's attention and MLP projections: every linear layer of a decoder block.
SMOLLM3_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraSettings(Strict):
    """The low-rank adapter (Hu et al. 2021): W x + (alpha / r) B A x on each target module."""

    r: int = Field(16, ge=1, le=4096, description="Rank of A and B; at most the smaller dimension of every target layer.")
    alpha: float = Field(32.0, gt=0, description="Scale numerator: the update is multiplied by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter's input (training only).")
    target_modules: list[str] = Field(
        default_factory=lambda: list(SMOLLM3_PROJECTIONS),
        min_length=1,
        description="Names (last component) of the linear modules that get an adapter.",
    )

    @field_validator("target_modules")
    @classmethod
    def _unique_targets(cls, names: list[str]) -> list[str]:
        require_unique(names, "lora.target_modules")
        return names


class QuantSettings(Strict):
    """How QLoRA (Dettmers et al. 2023) stores the frozen base: bitsandbytes 4-bit blocks."""

    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type; NF4 is QLoRA's normal-float code.")
    double_quant: bool = Field(True, description="Quantise the per-block scales too (saves ~0.4 bit per weight).")
    compute_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Dtype the 4-bit weights are dequantised to for each matmul (float32 on CPU)."
    )


class FinetuneConfig(Strict):
    """LoRA, QLoRA or full fine-tuning on instruction and chat data."""

    method: Literal["lora", "qlora", "full"] = Field(
        "lora",
        description="lora: frozen base plus adapters; qlora: the same on a 4-bit NF4 base (needs bitsandbytes); "
        "full: every weight trained.",
    )
    base: str | None = Field(
        None,
        min_length=1,
        description="Model to fine-tune: null = the model the pipeline's pretrain stage made; otherwise a registry "
        "URI (models:/smolforge-base@candidate), a local transformers folder (or an artifact folder holding "
        "model/), or a Hugging Face hub id (needs network or the local hub cache).",
    )
    data: list[str] = Field(
        default_factory=lambda: ["instruct/*.jsonl"],
        min_length=1,
        description="JSONL files or globs of instruction records (instruction/input/output) or chat records "
        "(messages); relative paths resolve against `data_dir`.",
    )
    data_dir: str | None = Field(
        None, description="Root for relative data paths (default: the curate data_dir, i.e. the sample corpus)."
    )
    lora: LoraSettings = Field(
        default_factory=LoraSettings, description="The adapters (rank, scale, dropout, target modules); lora and qlora."
    )
    qlora: QuantSettings = Field(
        default_factory=QuantSettings, description="How the frozen base is stored in 4 bits; qlora only."
    )
    lr: float = Field(2e-4, gt=0, le=1, description="Peak AdamW learning rate (LoRA wants ~1e-4..1e-3, full ~1e-5..1e-4).")
    weight_decay: float = Field(0.0, ge=0, description="Decoupled AdamW weight decay.")
    warmup_steps: int = Field(5, ge=0, description="Linear warm-up steps before the cosine decay to zero.")
    steps: int = Field(100, ge=1, description="Maximum optimizer steps (early stopping may end sooner).")
    batch_size: int = Field(8, ge=1, description="Records per optimizer step.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping threshold (global L2 norm).")
    max_seq_len: int = Field(512, ge=8, description="Records longer than this (tokens, rendered) are dropped as too_long.")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Share of the valid records held out for validation.")
    max_val_records: int = Field(64, ge=1, description="Cap on held-out records evaluated (keeps evaluation cheap).")
    eval_every: int = Field(10, ge=1, description="Evaluate the validation loss every this many steps (and at the end).")
    patience: int | None = Field(
        3,
        ge=1,
        description="Stop after this many evaluations without a lower validation loss; null: never stop early. "
        "The weights of the best evaluation are kept.",
    )
    gradient_checkpointing: bool | None = Field(
        None, description="Recompute activations in the backward pass to save memory; null: on for qlora only."
    )
    sample_prompts: int = Field(4, ge=0, description="Held-out prompts whose generations are logged.")
    max_new_tokens: int = Field(48, ge=1, description="Tokens generated per sample prompt.")
    device: str = Field("auto", description="auto (CUDA, then MPS, then CPU), cpu, cuda or mps.")
    threads: int | None = Field(
        None,
        ge=1,
        description="torch CPU threads while this stage trains (restored after); null: torch's default, one per "
        "core. A small model gains little from more, and loses much when another process holds a core.",
    )
    seed: int = Field(0, description="Seeds the batch order, dropout and the adapter initialisation (not the split).")
    split_seed: int = Field(
        0,
        description="Seeds which records are held out: fixed apart from `seed`, so fine-tunes with different seeds "
        "(merge ingredients) hold out the very same records.",
    )
    heldout_records: int = Field(
        0,
        ge=0,
        description="Records set aside before the validation split, for judging the fine-tunes afterwards (the merge "
        "stage's selection and test halves): never trained or validated on, whatever the seed.",
    )
    register_as: str = Field("smolforge-chat", min_length=1, description="Registered model name in MLflow.")

    @model_validator(mode="after")
    def _consistent(self) -> FinetuneConfig:
        if self.device == "cpu" and self.method == "qlora" and self.qlora.compute_dtype == "float16":
            raise ValueError("qlora.compute_dtype=float16 is not supported on device=cpu; use float32 or bfloat16")
        return self

    def split_settings(self) -> dict[str, int | float]:
        """How `data.load_data` splits the records: every reader of the split (training, a sweep
        trial, the evaluation's chat records, the merge's held-out records) passes these."""
        return {
            "max_seq_len": self.max_seq_len, "val_fraction": self.val_fraction, "max_val": self.max_val_records,
            "seed": self.split_seed, "holdout": self.heldout_records,
        }

    def uses_checkpointing(self) -> bool:
        return self.method == "qlora" if self.gradient_checkpointing is None else self.gradient_checkpointing
