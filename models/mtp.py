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


def _valid_targets(labels: torch.Tensor, d: int, seg: torch.Tensor | None, ignore_index: int) -> torch.Tensor:
    """Where the head at offset d has a target: inside the sequence, not ignored, same document."""
    valid = labels[:, d:] != ignore_index
    if seg is not None:
        valid &= seg[:, d:] == seg[:, :-d]
    return valid


def mtp_target_counts(
    heads: MTPHeads, labels: torch.Tensor, doc_ids: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX
) -> dict[int, int]:
    """Targets per offset in a batch. Summed over all the micro-batches (and all the processes'
    rows) of an optimizer step, these are the denominators that make `mtp_loss` of each part add
    up exactly to the loss of the whole step."""
    seg = document_segments(doc_ids) if doc_ids is not None else None
    return {
        d: int(_valid_targets(labels, d, seg, ignore_index).sum()) if labels.shape[1] > d else 0 for d in heads.offsets
    }


def mtp_losses(
    heads: MTPHeads,
    hidden_states: torch.Tensor,
    labels: torch.Tensor,
    *,
    lm_head: nn.Module,
    doc_ids: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    denominators: dict[int, int] | None = None,
) -> dict[int, torch.Tensor]:
    """Cross-entropy of each head, keyed by its offset; heads with no valid target are left out.

    `labels` follow transformers' convention: aligned with the input ids (not shifted), with
    `ignore_index` where no loss is wanted; the input ids themselves work for pretraining. The head
    at offset d reads position t and is scored against labels[t + d]. A target is skipped when
    t + d falls past the end of the sequence or in another document than t (under document masking
    position t cannot know anything about the next document). Each head's loss is the mean over
    this batch's targets, or the sum divided by `denominators[d]` (the targets of a whole step).
    """
    if hidden_states.shape[:2] != labels.shape:
        raise ValueError(f"hidden_states {tuple(hidden_states.shape)} and labels {tuple(labels.shape)} do not align")
    seg = document_segments(doc_ids) if doc_ids is not None else None
    seq_len = labels.shape[1]
    out: dict[int, torch.Tensor] = {}
    for head, d in zip(heads.heads, heads.offsets, strict=True):
        if seq_len <= d:
            continue
        valid = _valid_targets(labels, d, seg, ignore_index)
        if not valid.any():
            continue
        # Only the positions that have a target go through the vocabulary projection (the
        # expensive part); the others are never computed.
        logits = lm_head(head(hidden_states[:, :-d][valid]))
        if denominators is None:
            out[d] = F.cross_entropy(logits.float(), labels[:, d:][valid])
        else:
            out[d] = F.cross_entropy(logits.float(), labels[:, d:][valid], reduction="sum") / denominators[d]
    return out


def mtp_loss(
    heads: MTPHeads,
    hidden_states: torch.Tensor,
    labels: torch.Tensor,
    *,
    lm_head: nn.Module,
    doc_ids: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    denominators: dict[int, int] | None = None,
) -> torch.Tensor:
    """Average over offsets of `mtp_losses`; a zero scalar when there are no heads (a no-op to add).
    With `denominators`, the average runs over the offsets that have targets anywhere in the step,
    so the parts of a step add up to the step's loss.

    Unweighted: the trainer adds `heads.weight * mtp_loss(...)` to the next-token loss.
    """
    losses = mtp_losses(
        heads, hidden_states, labels, lm_head=lm_head, doc_ids=doc_ids, ignore_index=ignore_index, denominators=denominators
    )
    if not losses:
        return torch.zeros((), device=hidden_states.device, dtype=torch.float32)
    if denominators is None:
        return torch.stack(list(losses.values())).mean()
    return torch.stack(list(losses.values())).sum() / sum(1 for n in denominators.values() if n)
