"""Fine-tuning settings: the method (LoRA, QLoRA, full, prefix tuning, prompt tuning or (IA)³), the
adapter, the quantisation, the data and the loop.

Torch-free like the other stage configs, so a bad value fails at validation with the field named.
What can only be checked against the base model (target modules that exist, a rank no larger than
a layer) is checked by `adapters.check_against_model` before training starts.

Units: a *step* is one optimizer update over `batch_size` records (one record is one rendered
conversation, padded to the longest in its batch), run as micro-batches of `micro_batch_size`
records whose gradients add up; lengths are in tokens of the base's tokenizer. The soft prompt of
prefix and prompt tuning takes `num_virtual_tokens` of the `max_seq_len` positions, so a record may
be that much shorter.
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


# (IA)³'s choice for decoder blocks (Liu et al. 2022; peft's default for Llama-shaped models): keys and
# values rescaled in attention, the MLP's inner activation rescaled at the down projection's input.
IA3_TARGETS = ["k_proj", "v_proj", "down_proj"]
IA3_FEEDFORWARD = ["down_proj"]
# The fewest positions a record needs besides the soft prompt (the same floor as `max_seq_len`'s).
MIN_RECORD_TOKENS = 8


class PrefixSettings(Strict):
    """Prefix tuning (Li & Liang 2021): trained key/value vectors prepended in every attention layer."""

    num_virtual_tokens: int = Field(16, ge=1, description="Prefix length in positions, taken from max_seq_len.")
    projection: bool = Field(
        False, description="Reparametrise the prefix through a two-layer MLP while training (more parameters, "
        "steadier training in the paper); the saved adapter is the same shape either way."
    )


class PromptSettings(Strict):
    """Prompt tuning (Lester et al. 2021): trained input embeddings prepended to every record."""

    num_virtual_tokens: int = Field(16, ge=1, description="Soft-prompt length in positions, taken from max_seq_len.")
    init_text: str | None = Field(
        None,
        min_length=1,
        description="Start the soft prompt from this text's token embeddings (repeated or cut to "
        "num_virtual_tokens); null: random vectors.",
    )


class IA3Settings(Strict):
    """(IA)³ (Liu et al. 2022): one learned scale per channel on each target module."""

    target_modules: list[str] = Field(
        default_factory=lambda: list(IA3_TARGETS), min_length=1,
        description="Names (last component) of the linear modules whose activations are rescaled.",
    )
    feedforward_modules: list[str] = Field(
        default_factory=lambda: list(IA3_FEEDFORWARD),
        description="Those of target_modules that are MLP layers: scaled on their input, the others on their output.",
    )

    @model_validator(mode="after")
    def _feedforward_among_targets(self) -> IA3Settings:
        require_unique(self.target_modules, "ia3.target_modules")
        extra = [m for m in self.feedforward_modules if m not in self.target_modules]
        if extra:
            raise ValueError(f"ia3.feedforward_modules {extra} are not in ia3.target_modules {self.target_modules}")
        return self


class NamedAdapter(Strict):
    """One of several adapters trained on the same base: its own data, its own artifact."""

    name: str = Field(
        ..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$", max_length=64,
        description="How a request picks this adapter (`--adapter NAME`, the served model's `adapter` param).",
    )
    data: list[str] = Field(
        ..., min_length=1, description="JSONL files or globs this adapter learns from (as finetune.data)."
    )


class QuantSettings(Strict):
    """How QLoRA (Dettmers et al. 2023) stores the frozen base: bitsandbytes 4-bit blocks."""

    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type; NF4 is QLoRA's normal-float code.")
    double_quant: bool = Field(True, description="Quantise the per-block scales too (saves ~0.4 bit per weight).")
    compute_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Dtype the 4-bit weights are dequantised to for each matmul (float32 on CPU)."
    )


class FinetuneConfig(Strict):
    """Fine-tuning on instruction and chat data with one of six methods."""

    method: Literal["lora", "qlora", "full", "prefix", "prompt", "ia3"] = Field(
        "lora",
        description="lora: frozen base plus low-rank adapters; qlora: the same on a 4-bit NF4 base (needs "
        "bitsandbytes); full: every weight trained; prefix: prefix tuning; prompt: prompt tuning (a soft "
        "prompt); ia3: (IA)³ scaling vectors. prefix and prompt cannot be merged into the base: they are "
        "registered as base + adapter.",
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
    prefix: PrefixSettings = Field(default_factory=PrefixSettings, description="Prefix tuning's prefix; prefix only.")
    prompt: PromptSettings = Field(default_factory=PromptSettings, description="Prompt tuning's soft prompt; prompt only.")
    ia3: IA3Settings = Field(default_factory=IA3Settings, description="(IA)³'s scaled modules; ia3 only.")
    adapters: list[NamedAdapter] = Field(
        default_factory=list,
        description="Several adapters on one base, each trained on its own data with these settings and cached "
        "on its own key, registered together so a request picks one; empty: one model trained on `data`.",
    )
    lr: float = Field(2e-4, gt=0, le=1, description="Peak AdamW learning rate (LoRA wants ~1e-4..1e-3, full ~1e-5..1e-4).")
    weight_decay: float = Field(0.0, ge=0, description="Decoupled AdamW weight decay.")
    warmup_steps: int = Field(5, ge=0, description="Linear warm-up steps before the cosine decay to zero.")
    steps: int = Field(100, ge=1, description="Maximum optimizer steps (early stopping may end sooner).")
    batch_size: int = Field(8, ge=1, description="Records per optimizer step.")
    micro_batch_size: int | None = Field(
        None, ge=1,
        description="Records per forward/backward pass, their gradients accumulated to a step of batch_size; "
        "null: the whole batch at once. Halved (and accumulation doubled) on an out-of-memory error.",
    )
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
        virtual = self.virtual_tokens()
        if self.max_seq_len - virtual < MIN_RECORD_TOKENS:
            raise ValueError(
                f"{self.method}.num_virtual_tokens={virtual} leaves {self.max_seq_len - virtual} of max_seq_len="
                f"{self.max_seq_len} positions for the record itself; a record needs at least {MIN_RECORD_TOKENS}: "
                f"use num_virtual_tokens <= {self.max_seq_len - MIN_RECORD_TOKENS} or a longer max_seq_len"
            )
        if self.micro_batch_size is not None and self.micro_batch_size > self.batch_size:
            raise ValueError(f"micro_batch_size={self.micro_batch_size} is larger than batch_size={self.batch_size}")
        require_unique([a.name for a in self.adapters], "finetune.adapters names")
        if self.adapters and self.method == "full":
            raise ValueError("finetune.adapters trains adapters on one base, but method=full trains the base itself: choose "
                             "lora, qlora, prefix, prompt or ia3")
        return self

    def virtual_tokens(self) -> int:
        """Positions the method's soft prompt takes in every record (0 but for prefix and prompt)."""
        settings = {"prefix": self.prefix, "prompt": self.prompt}.get(self.method)
        return 0 if settings is None else settings.num_virtual_tokens

    def mergeable(self) -> bool:
        """Whether the trained adapter folds into the base's weights (prefix and prompt tuning do not)."""
        return self.method not in ("prefix", "prompt")

    def split_settings(self) -> dict[str, int | float]:
        """How `data.load_data` splits the records: every reader of the split (training, a sweep
        trial, the evaluation's chat records, the merge's held-out records) passes these. A soft
        prompt's positions come off the record length."""
        return {
            "max_seq_len": self.max_seq_len - self.virtual_tokens(), "val_fraction": self.val_fraction, "max_val": self.max_val_records,
            "seed": self.split_seed, "holdout": self.heldout_records,
        }

    def uses_checkpointing(self) -> bool:
        return self.method == "qlora" if self.gradient_checkpointing is None else self.gradient_checkpointing
