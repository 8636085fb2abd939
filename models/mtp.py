"""Multi-token prediction (MTP): auxiliary heads that predict tokens 2..k+1 positions ahead.

Why: asking the final hidden state to also carry the tokens after the next one gives a denser
training signal per position and pushes the representation to plan ahead (Gloeckle et al. 2024;
DeepSeek-V3 trains with one such head). It is a training aid only: the heads are dropped at export,
so the released model is a plain `SmolLM3ForCausalLM`, and they are saved beside the model in
training checkpoints (`heads.state_dict()` holds only their own weights).

Each head is deliberately small: a hidden x hidden projection and an RMSNorm, then the model's own
output embedding (tied to the input embedding), so each head adds one hidden x hidden matrix
instead of another vocabulary-sized one, and the shared embedding receives gradient from every
offset.

Use with the model's final (normalised) hidden states, which transformers returns as the last
element of `hidden_states`:

    out = model(input_ids, attention_mask=..., position_ids=..., labels=labels, output_hidden_states=True)
    loss = out.loss + cfg.weight * mtp_loss(heads, out.hidden_states[-1], labels,
                                            lm_head=model.get_output_embeddings(), doc_ids=doc_ids)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from smolforge.models.config import MTPConfig
from smolforge.models.masking import document_segments

IGNORE_INDEX = -100


class _Head(nn.Module):
    """hidden -> Linear -> RMSNorm; the caller applies the shared output embedding."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size, bias=False)
        # The norm comes after the projection so the shared output embedding sees inputs on the same
        # scale as the main head's (which follow the model's final RMSNorm).
        self.norm = nn.RMSNorm(hidden_size, eps=eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Identity start: each head begins as a copy of the next-token predictor, a sensible guess
        # for a token a little further ahead and a well-scaled loss from step 0 (a random projection
        # would start from near-uniform logits and push large early gradients into the shared
        # embedding).
        with torch.no_grad():
            nn.init.eye_(self.proj.weight)
        self.norm.reset_parameters()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(hidden_states))


class MTPHeads(nn.Module):
    """`mtp.heads` extra heads; head i (0-based) predicts the token i + 2 positions ahead."""

    def __init__(self, model_config, mtp: MTPConfig) -> None:
        super().__init__()
        self.weight = mtp.weight
        eps = getattr(model_config, "rms_norm_eps", 1e-6)
        self.heads = nn.ModuleList(_Head(model_config.hidden_size, eps) for _ in range(mtp.heads))

    @property
    def offsets(self) -> list[int]:
        """How far ahead each head predicts: 2, 3, ..., k + 1 (offset 1 is the model's own head)."""
        return [i + 2 for i in range(len(self.heads))]

    def __len__(self) -> int:
        return len(self.heads)

    def forward(self, hidden_states: torch.Tensor, lm_head: nn.Module) -> list[torch.Tensor]:
        """Logits [B, T, V] of every head, each at every position (callers that train should use
        `mtp_loss`, which only computes the positions that have a target)."""
        return [lm_head(head(hidden_states)) for head in self.heads]


def mtp_losses(
    heads: MTPHeads,
    hidden_states: torch.Tensor,
    labels: torch.Tensor,
    *,
    lm_head: nn.Module,
    doc_ids: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> dict[int, torch.Tensor]:
    """Mean cross-entropy of each head, keyed by its offset; heads with no valid target are left out.

    `labels` follow transformers' convention: aligned with the input ids (not shifted), with
    `ignore_index` where no loss is wanted; the input ids themselves work for pretraining. The head
    at offset d reads position t and is scored against labels[t + d]. A target is skipped when
    t + d falls past the end of the sequence or in another document than t (under document masking
    position t cannot know anything about the next document).
    """
    if hidden_states.shape[:2] != labels.shape:
        raise ValueError(f"hidden_states {tuple(hidden_states.shape)} and labels {tuple(labels.shape)} do not align")
    seg = document_segments(doc_ids) if doc_ids is not None else None
    seq_len = labels.shape[1]
    out: dict[int, torch.Tensor] = {}
    for head, d in zip(heads.heads, heads.offsets, strict=True):
        if seq_len <= d:
            continue
        targets = labels[:, d:]
        valid = targets != ignore_index
        if seg is not None:
            valid &= seg[:, d:] == seg[:, :-d]
        if not valid.any():
            continue
        # Only the positions that have a target go through the vocabulary projection (the
        # expensive part); the others are never computed.
        logits = lm_head(head(hidden_states[:, :-d][valid]))
        out[d] = F.cross_entropy(logits.float(), targets[valid])
    return out


def mtp_loss(
    heads: MTPHeads,
    hidden_states: torch.Tensor,
    labels: torch.Tensor,
    *,
    lm_head: nn.Module,
    doc_ids: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Average over offsets of `mtp_losses`; a zero scalar when there are no heads (a no-op to add).

    Unweighted: the trainer adds `heads.weight * mtp_loss(...)` to the next-token loss.
    """
    losses = mtp_losses(heads, hidden_states, labels, lm_head=lm_head, doc_ids=doc_ids, ignore_index=ignore_index)
    if not losses:
        return torch.zeros((), device=hidden_states.device, dtype=torch.float32)
    return torch.stack(list(losses.values())).mean()
