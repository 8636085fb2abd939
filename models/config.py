"""Model, multi-token-prediction and optimizer settings, without importing torch.

The project's config module composes these into the pipeline config, and a config must validate
(and fail with a readable reason) in a process that never trains, e.g. `smolforge validate` or the
UI, so nothing here may pull in torch or transformers.

A model is chosen by `preset` (a named shape) plus optional per-field overrides; `resolve()` gives
the effective shape. Impossible shapes (heads that do not divide the width, query heads that cannot
be grouped over the key/value heads) are rejected when the config is validated, before any data is
read or any weight is allocated.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from smolforge.strict import Strict


class ModelShape(Strict):
    """The fully resolved architecture: every field set, nothing left to a preset."""

    hidden_size: int = Field(description="Width of the residual stream (features per token).")
    num_layers: int = Field(description="Decoder layers.")
    num_heads: int = Field(description="Query heads per attention layer.")
    num_kv_heads: int = Field(description="Key/value heads (grouped-query attention).")
    intermediate_size: int = Field(description="Width of the SwiGLU feed-forward block (features).")
    rope_theta: float = Field(description="RoPE base frequency.")
    nope_every: int = Field(description="Every N-th layer drops RoPE (NoPE); 0 keeps RoPE everywhere.")
    max_seq_len: int = Field(description="Longest sequence the model is trained on, in tokens (max_position_embeddings).")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def nope_layers(self) -> list[int]:
        """0-based indices of the layers without RoPE: layers N-1, 2N-1, ... (SmolLM3's rule)."""
        if self.nope_every == 0:
            return []
        return [i for i in range(self.num_layers) if (i + 1) % self.nope_every == 0]


# Named shapes. `tiny` trains on a laptop CPU in minutes; `small` is SmolLM2-135M's shape; the 3B is
# SmolLM3's published architecture. rope_theta: SmolLM3 pretrained at 4k context with theta 50k and
# raised it only for the long-context stages (transformers' SmolLM3Config defaults to 2M, the value
# of those later stages), so 50k is the pretraining value. SmolLM2-135M used 100k.
PRESETS: dict[str, ModelShape] = {
    "tiny": ModelShape(
        hidden_size=256,
        num_layers=6,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=768,
        rope_theta=10_000.0,
        nope_every=4,
        max_seq_len=512,
    ),
    "small": ModelShape(
        hidden_size=576,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        intermediate_size=1536,
        rope_theta=100_000.0,
        nope_every=4,
        max_seq_len=2048,
    ),
    "smollm3-3b": ModelShape(
        hidden_size=2048,
        num_layers=36,
        num_heads=16,
        num_kv_heads=4,
        intermediate_size=11008,
        rope_theta=50_000.0,
        nope_every=4,
        max_seq_len=4096,
    ),
}


class ModelConfig(Strict):
    """Which architecture to build: a preset shape, with any field overridden."""

    preset: Literal["tiny", "small", "smollm3-3b"] = Field(
        "tiny",
        description="Base shape: tiny (a few million parameters, CPU), small (SmolLM2-135M's shape), "
        "smollm3-3b (SmolLM3's shape).",
    )
    hidden_size: int | None = Field(None, ge=8, description="Override: width of the residual stream (features per token).")
    num_layers: int | None = Field(None, ge=1, description="Override: number of decoder layers.")
    num_heads: int | None = Field(None, ge=1, description="Override: query heads per layer.")
    num_kv_heads: int | None = Field(
        None, ge=1, description="Override: key/value heads; must divide num_heads (grouped-query attention)."
    )
    intermediate_size: int | None = Field(None, ge=1, description="Override: SwiGLU feed-forward width (features).")
    rope_theta: float | None = Field(None, gt=0, description="Override: RoPE base frequency.")
    nope_every: int | None = Field(
        None, ge=0, description="Override: drop RoPE in every N-th layer (SmolLM3: 4); 0 keeps RoPE in all layers."
    )
    max_seq_len: int | None = Field(None, ge=8, description="Override: training context length in tokens.")

    def resolve(self) -> ModelShape:
        """The preset with the overrides applied."""
        base = PRESETS[self.preset].model_dump()
        overrides = {k: v for k, v in self.model_dump(exclude={"preset"}).items() if v is not None}
        return ModelShape(**{**base, **overrides})

    @model_validator(mode="after")
    def _check_shape(self) -> ModelConfig:
        shape = self.resolve()
        # Name where each value came from, so a failing preset+override combination is easy to fix.
        src = {
            f: "" if getattr(self, f) is not None else f" (from preset {self.preset!r})"
            for f in type(shape).model_fields
        }
        if shape.hidden_size % shape.num_heads:
            raise ValueError(
                f"hidden_size={shape.hidden_size}{src['hidden_size']} is not divisible by "
                f"num_heads={shape.num_heads}{src['num_heads']}: every head needs the same width"
            )
        if shape.num_heads % shape.num_kv_heads:
            raise ValueError(
                f"num_heads={shape.num_heads}{src['num_heads']} is not divisible by "
                f"num_kv_heads={shape.num_kv_heads}{src['num_kv_heads']}: grouped-query attention shares "
                "each key/value head between an equal number of query heads"
            )
        if shape.head_dim % 2:
            raise ValueError(
                f"head width hidden_size/num_heads = {shape.hidden_size}/{shape.num_heads} = {shape.head_dim} "
                "is odd: RoPE rotates pairs of dimensions, so it must be even"
            )
        return self


class MTPConfig(Strict):
    """Multi-token prediction: extra heads trained to predict tokens further ahead (training only)."""

    heads: int = Field(
        0, ge=0, le=8, description="Extra heads; head i predicts the token i+1 positions after the next (2..k+1 ahead)."
    )
    weight: float = Field(0.3, ge=0, description="Weight of the averaged auxiliary loss added to the next-token loss.")


class OptimizerConfig(Strict):
    """AdamW as SmolLM3 trained, or Muon for the hidden weight matrices with AdamW for the rest."""

    name: Literal["adamw", "muon"] = Field(
        "adamw", description="adamw: every parameter; muon: Muon on 2-D hidden matrices, AdamW on the rest."
    )
    lr: float = Field(3e-4, gt=0, description="Peak learning rate of AdamW (and of the AdamW part under muon).")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW (beta1, beta2).")
    weight_decay: float = Field(
        0.1, ge=0, description="Decoupled weight decay on weight matrices; embeddings, norms and biases get none."
    )
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    muon_lr: float = Field(0.02, gt=0, description="Peak learning rate of Muon (scaled by the same schedule).")
    muon_momentum: float = Field(0.95, ge=0, lt=1, description="Muon (Nesterov) momentum.")
    muon_weight_decay: float | None = Field(
        None, ge=0, description="Decoupled weight decay of the Muon matrices; null: the same as weight_decay."
    )
    muon_adjust_lr: Literal["original", "match_rms_adamw"] = Field(
        "original",
        description="torch Muon's per-shape lr scaling: original (sqrt(max(1, out/in)), for muon_lr ~0.02) or "
        "match_rms_adamw (0.2*sqrt(max dim), lets Muon reuse AdamW's lr, Moonlight).",
    )
    qk_clip: float | None = Field(
        None,
        gt=0,
        description="QK-clip (Kimi K2's MuonClip) threshold on the largest pre-softmax attention logit of each "
        "head; after a step, heads above it have their query/key weights scaled down. Null: off. Kimi K2: 100.",
    )

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        for name, beta in zip(("beta1", "beta2"), betas, strict=True):
            if not 0 <= beta < 1:
                raise ValueError(f"{name}={beta} must be in [0, 1)")
        return betas
