"""The teacher: whether it fits the student, and its stored top-k predictions.

Where a teacher comes from (the pipeline's artifact, the registry, a folder, the hub) is
`smolforge.model_source`'s business, shared with fine-tuning's base. Before any training the teacher is checked against the student's side: the same tokenizer (the
student learns from the corpus tokenizer's ids, and a KL between distributions over two different
vocabularies compares unrelated tokens) and more parameters than the student.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smolforge.errors import ConfigError
from smolforge.models.architecture import build_model_config, count_parameters, tokenizer_ids
from smolforge.models.config import ModelConfig
from smolforge.models.masking import packed_attention_inputs
from smolforge.tasks.curate.tokenizer import load_tokenizer
from smolforge.tasks.train.data import StagePlan, step_batches

# Strings whose encodings two tokenizers must agree on, beyond equal vocabularies: equal tables with
# different merges or normalisation would still split text differently.
PROBES = [
    "The river ran past the old mill, and the miller's daughter watched it.",
    "Le roi est mort, vive le roi ! Où est la bibliothèque ?",
    "def main():\n    return {'a': [1, 2, 3]}  # 42\n",
    "  multiple   spaces\tand\ttabs\r\n",
    "Zahlen: 3.14159, 1e-3, 100%; emoji 🙂 and CJK 漢字.",
]


class TeacherError(ConfigError):
    """The teacher cannot be used with this student: another tokenizer, or not larger."""


# --- does it fit the student ------------------------------------------------------------------------


def tokenizer_differences(teacher: Any, student: Any) -> list[str]:
    """What differs between two tokenizers, in words; empty when they encode alike."""
    problems = []
    tv, sv = teacher.get_vocab(), student.get_vocab()
    if len(tv) != len(sv):
        problems.append(f"vocabulary sizes differ: teacher {len(tv)}, student {len(sv)}")
    moved = sorted(t for t in tv.keys() & sv.keys() if tv[t] != sv[t])
    only = sorted(tv.keys() ^ sv.keys())
    if moved:
        examples = ", ".join(f"{t!r}: {tv[t]} vs {sv[t]}" for t in moved[:3])
        problems.append(f"{len(moved)} tokens have different ids (e.g. {examples})")
    if only:
        problems.append(f"{len(only)} tokens are in only one vocabulary (e.g. {', '.join(map(repr, only[:3]))})")
    for what in ("bos", "eos", "pad"):
        t_id, s_id = getattr(teacher, f"{what}_token_id", None), getattr(student, f"{what}_token_id", None)
        if t_id != s_id:
            problems.append(f"{what} token ids differ: teacher {t_id}, student {s_id}")
    if not problems:
        for text in PROBES:
            a = teacher(text, add_special_tokens=False).input_ids
            b = student(text, add_special_tokens=False).input_ids
            if a != b:
                problems.append(f"they split {text[:30]!r}... differently ({a[:6]}... vs {b[:6]}...)")
                break
    return problems


def require_same_tokenizer(teacher: Any, student: Any, teacher_name: str, student_name: str) -> None:
    problems = tokenizer_differences(teacher, student)
    if problems:
        raise TeacherError(
            f"the teacher's tokenizer ({teacher_name}) is not the student's ({student_name}): " + "; ".join(problems)
            + ". Distillation compares the two models' distributions token id by token id, so they must share one "
            "tokenizer: distil from a teacher trained on this corpus's tokenizer, or set curate.tokenizer.pretrained "
            "to the teacher's tokenizer."
        )


def parameter_count(config: Any) -> int:
    """Parameters of a transformers model config, counted on the meta device (nothing allocated)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def check_teacher(folder: Path, tokenizer: Any, tokenizer_name: str, student: ModelConfig) -> dict[str, int]:
    """Refuse a teacher that does not share the student's tokenizer or is not larger than the student.

    The student must be strictly smaller. Distilling into a student as large as the teacher
    ("born-again" self-distillation) can help a little, but it buys nothing this stage is for: the
    result costs as much to serve as the teacher, and training pays for the teacher's forward too.
    A student of that size is better trained by pretraining, so the setting is taken as a mistake.
    """
    from transformers import AutoConfig


    require_same_tokenizer(load_tokenizer(str(folder)), tokenizer, str(folder), tokenizer_name)
    teacher_config = AutoConfig.from_pretrained(folder)
    if teacher_config.vocab_size != len(tokenizer):
        raise TeacherError(
            f"the teacher at {folder} has vocab_size={teacher_config.vocab_size} in its config but its tokenizer has "
            f"{len(tokenizer)} tokens; its logits cannot be compared with the student's"
        )
    student_config = build_model_config(student, **tokenizer_ids(tokenizer))
    sizes = {"teacher_parameters": parameter_count(teacher_config), "student_parameters": count_parameters(student_config)}
    if sizes["student_parameters"] >= sizes["teacher_parameters"]:
        shape = student.resolve()
        raise TeacherError(
            f"distill.student has {sizes['student_parameters']:,} parameters (hidden_size={shape.hidden_size}, "
            f"num_layers={shape.num_layers}), not fewer than the teacher's {sizes['teacher_parameters']:,}: "
            "the student must be smaller than the teacher (narrower or with fewer layers)"
        )
    return sizes


def load_teacher(folder: Path, device: torch.device) -> torch.nn.Module:
    """The teacher in eval mode with gradients off: it is only ever read."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa", dtype=torch.float32)
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def teacher_logits(teacher: torch.nn.Module, input_ids: torch.Tensor, doc_ids: torch.Tensor) -> torch.Tensor:
    """Teacher logits [B, T, V] under the same intra-document attention the student trains with."""
    packed = packed_attention_inputs(doc_ids, teacher.config._attn_implementation, next(teacher.parameters()).dtype)
    return teacher(input_ids=input_ids, **packed).logits.float()


# --- stored top-k predictions ----------------------------------------------------------------------

TOPK_META = "topk.json"


def write_topk(teacher: torch.nn.Module, plan: StagePlan, seed: int, k: int, out: Path, device: torch.device) -> dict[str, Any]:
    """Run the teacher once over every step of `plan` and store its top-k log-probabilities.

    `logprobs.npy` (float16) and `ids.npy` hold [steps, sequences per step, seq_len, k], in the row
    order `step_batches(plan, step, seed)` gives, so a student reads step s's targets by index.
    """
    if k > teacher.config.vocab_size:
        raise ValueError(f"top_k={k} exceeds the teacher's vocabulary of {teacher.config.vocab_size}")
    shape = (plan.steps, plan.sequences_per_step, plan.seq_len, k)
    id_dtype = np.uint16 if teacher.config.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
    logprobs = np.lib.format.open_memmap(out / "logprobs.npy", mode="w+", dtype=np.float16, shape=shape)
    ids = np.lib.format.open_memmap(out / "ids.npy", mode="w+", dtype=id_dtype, shape=shape)
    mass = 0.0
    for step in range(plan.steps):
        row = 0
        for batch in step_batches(plan, step, seed):
            batch = batch.to(device)
            lp = torch.log_softmax(teacher_logits(teacher, batch.input_ids, batch.doc_ids), dim=-1)
            top = lp.topk(k, dim=-1)
            n = batch.input_ids.shape[0]
            logprobs[step, row : row + n] = top.values.cpu().numpy().astype(np.float16)
            ids[step, row : row + n] = top.indices.cpu().numpy().astype(id_dtype)
            mass += float(top.values.exp().sum(-1).mean())
            row += n
    logprobs.flush()
    ids.flush()
    del logprobs, ids
    meta = {"k": k, "steps": plan.steps, "sequences_per_step": plan.sequences_per_step, "seq_len": plan.seq_len, "seed": seed}
    (out / TOPK_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    micro_batches = plan.steps * plan.grad_accum
    return {**meta, "mean_topk_mass": mass / micro_batches}


class TopKStore:
    """Reads a `teacher-topk` artifact back, step by step, as tensors for `topk_kl`."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / TOPK_META).read_text(encoding="utf-8"))
        self.logprobs = np.load(self.folder / "logprobs.npy", mmap_mode="r")
        self.ids = np.load(self.folder / "ids.npy", mmap_mode="r")

    def check_plan(self, plan: StagePlan, seed: int) -> None:
        """The store must hold the very batches the student will read."""
        want = {"steps": plan.steps, "sequences_per_step": plan.sequences_per_step, "seq_len": plan.seq_len, "seed": seed}
        have = {key: self.meta[key] for key in want}
        if have != want:
            raise ValueError(f"the teacher top-k store at {self.folder} was made for {have}, the student reads {want}")

    def micro_batches(self, step: int, batch_size: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, self.meta["sequences_per_step"], batch_size):
            rows = slice(start, start + batch_size)
            lp = torch.from_numpy(np.asarray(self.logprobs[step, rows], dtype=np.float32))
            ids = torch.from_numpy(np.asarray(self.ids[step, rows], dtype=np.int64))
            yield lp.to(device), ids.to(device)
