"""The distillation loss: temperature-softened KL to the teacher, mixed with next-token cross-entropy.

No library ships this loss in a form that takes our packed batches (labels already shifted, document
boundaries marked with IGNORE_INDEX), so it is written here, small and tested.

Only positions with a target count, in both terms: where `labels == IGNORE_INDEX` the position is a
document's end-of-text whose next token starts another document, which intra-document attention
hides from the model. Pretraining does not train that prediction, so distillation must not either,
however confident the teacher is there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from smolforge.tasks.train.data import IGNORE_INDEX


@dataclass
class DistillLoss:
    """Sums over the target positions of a micro-batch; divide by the step's target count."""

    loss: torch.Tensor  # alpha * T^2 * kl + (1 - alpha) * ce, summed
    kl: torch.Tensor  # KL(teacher_T || student_T), summed, without T^2
    ce: torch.Tensor  # cross-entropy against the labels, summed


def full_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per position KL(teacher_T || student_T) over the whole vocabulary: [B, T, V] -> [B, T]."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1)


def _with_tail(top_logprobs: torch.Tensor) -> torch.Tensor:
    """[..., k] log-probabilities of k tokens -> [..., k + 1], the last entry "any other token"."""
    mass = top_logprobs.exp().sum(-1, keepdim=True)
    return torch.cat([top_logprobs, torch.log((1 - mass).clamp_min(TAIL_FLOOR))], dim=-1)


TAIL_FLOOR = 1e-8  # tail mass below this (k = vocabulary, rounding) counts as this: log(0) is -inf


def topk_kl(
    student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, teacher_ids: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Per position KL from the teacher's stored top-k: [B, T, V], [B, T, k], [B, T, k] -> [B, T].

    The approximation: both distributions are coarsened to k + 1 outcomes, the teacher's k most
    likely tokens and "any other token" (whose probability is one minus the rest), and the KL is
    taken between the coarsened distributions. By the data-processing inequality this is at most the
    full KL, and equal to it when k is the vocabulary size. The tail bucket matters: renormalising
    both models over the k tokens alone ignores the mass the student puts elsewhere, and a student
    trained mostly on that term keeps a fat tail (worse than training without a teacher, on the
    tiny preset); keeping the student's full distribution without a teacher tail instead pushes
    all of the student's mass into the k tokens, which at T > 1, where the teacher's own top k hold
    far less than all of its mass, makes the student overconfident.

    The temperature is applied to the coarsened distributions (the tail softened as if it were one
    token), which is exact at T = 1 and an approximation above. The stored values are plain (T = 1)
    log-probabilities, so one store serves every temperature and every student.
    """
    s = _with_tail(F.log_softmax(student_logits.float(), dim=-1).gather(-1, teacher_ids.long()))
    t = _with_tail(teacher_logprobs.float())
    if temperature != 1:
        s, t = F.log_softmax(s / temperature, dim=-1), F.log_softmax(t / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1)


def distill_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    teacher_logits: torch.Tensor | None = None,
    teacher_topk: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> DistillLoss:
    """Hinton et al. (2015): alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE.

    Give the teacher as full logits [B, T, V] or as stored top-k (log-probabilities, token ids), each
    [B, T, k]; with alpha == 0 no teacher is needed. The T^2 factor keeps the soft term's gradient
    scale independent of T (its gradients shrink as 1/T^2), so alpha weighs the same at any T.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    mask = labels != IGNORE_INDEX
    ce = F.cross_entropy(student_logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    if alpha == 0:
        kl = torch.zeros((), device=student_logits.device)
    elif teacher_topk is not None:
        kl = topk_kl(student_logits, *teacher_topk, temperature)[mask].sum()
    elif teacher_logits is not None:
        kl = full_kl(student_logits, teacher_logits, temperature)[mask].sum()
    else:
        raise ValueError("alpha > 0 needs the teacher: pass teacher_logits or teacher_topk")
    loss = alpha * temperature**2 * kl + (1 - alpha) * ce
    return DistillLoss(loss=loss, kl=kl, ce=ce)
