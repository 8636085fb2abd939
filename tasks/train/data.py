"""Training batches from the packed token shards: a mixture of sources per stage, planned up front
and sampled without hidden state.

Planning (`plan_stage`, `plan_stages`) turns a stage's budget and mixture into exact numbers before
any training: steps, sequences and tokens per source, and how many times each source is read
(epochs). Repeating data beyond a few epochs buys little (Muennighoff et al. 2023, "Scaling
Data-Constrained Language Models"), so a plan that reads any source more than `max_epochs` times
over the run is refused with the numbers needed to fix it; smaller repetitions are stated in the
plan so they get logged.

Sampling is a pure function of (plan, seed, step): the batches of step k are computed from k, never
from an iterator that has been advanced k times. Resuming at step k therefore sees exactly the
batches an uninterrupted run would have seen, and a rollback can skip batches by moving the data
position. Two pieces make that possible:

* Which source each sequence comes from follows a fixed interleaving pattern of period `PERIOD`
  sequences in which each source holds a number of slots proportional to its weight, spread evenly.
  The count of sequences a source received before any position is then arithmetic, and every step
  carries the mixture to within about one sequence per source (i.i.d. draws would wander, badly
  for the small sources of a small batch).
* Each source is cut into windows of `seq_len + 1` tokens starting every `seq_len` tokens (so each
  token is a target once per epoch), and the n-th sequence taken from a source is window
  `perm_e(n mod W)` of epoch `e = n // W`, where `perm_e` is a keyed pseudo-random permutation of the
  W windows (a Feistel network with cycle walking: O(1) memory, computed per index, and independent
  of numpy's generator streams, which numpy does not promise to keep across versions). Every window
  is read once per epoch; a new epoch reads them in a new order. Stages continue each source's
  walk where the previous stage left it, so a later stage reads unseen windows first and the epoch
  count is cumulative over the run.

Labels and document boundaries: packed shards concatenate documents, each ending with eos. With a
per-document attention mask (`doc_ids`), a position only sees its own document, so:

* `labels[t] = input[t + 1]` within a document, including the last real token predicting the eos
  (the model must learn to end documents);
* where position t is a document's eos and t + 1 starts the next document, `labels[t] = -100`
  (ignored): the next document's first token cannot be predicted from a context that may not see
  it, and predicting it from the previous document would teach a dependency the mask forbids. The
  first token of every document is therefore never a target.

`labels` are next-token targets already aligned with the inputs (see `Batch`), unlike the labels
transformers' causal-LM loss takes, which it shifts itself.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smolforge.artifacts import local_folder
from smolforge.tasks.curate.pack import SPLITS, document_ids, open_split, read_meta
from smolforge.tasks.train.config import PretrainConfig, StageConfig

IGNORE_INDEX = -100  # the label value torch's cross-entropy skips by default
PERIOD = 4096  # sequences per period of the mixture pattern: weights are realised to 1/4096


# --- sources -----------------------------------------------------------------------------------


class Source:
    """One packed source folder. Counts come from the corpus record, so planning touches no token
    file; the memmaps are opened on first use and not pickled (a worker process reopens them
    instead of receiving a copy of the data)."""

    def __init__(self, name: str, folder: Path, meta: Mapping[str, Any]):
        self.name = name
        self.folder = Path(folder)
        self.eos_id = int(meta["eos_id"])
        self.vocab_size = int(meta["vocab_size"])
        self._counts = {s: dict(meta.get(s) or {"n_tokens": 0, "n_docs": 0}) for s in SPLITS}
        self._open: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def n_tokens(self, split: str = "train") -> int:
        return int(self._counts[split]["n_tokens"])

    def n_docs(self, split: str = "train") -> int:
        return int(self._counts[split]["n_docs"])

    def windows(self, seq_len: int, split: str = "train") -> int:
        """Windows of seq_len inputs plus one target token, starting every seq_len tokens."""
        return max(0, (self.n_tokens(split) - 1) // seq_len)

    def split(self, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        """(tokens memmap, document offsets), opened once."""
        if split not in self._open:
            if not (self.folder / "meta.json").exists():
                raise FileNotFoundError(f"source {self.name!r}: no packed shards at {self.folder} (meta.json missing)")
            tokens, offsets = open_split(self.folder, split)
            if int(offsets[-1]) != self.n_tokens(split):
                raise ValueError(
                    f"source {self.name!r}: {self.folder} holds {int(offsets[-1])} {split} tokens but the corpus "
                    f"record says {self.n_tokens(split)}; the corpus record is stale"
                )
            self._open[split] = (tokens, offsets)
        return self._open[split]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": {}}

    def __repr__(self) -> str:
        return f"Source({self.name!r}, train={self.n_tokens('train')} tokens, val={self.n_tokens('val')} tokens)"


class CorpusSources(Mapping[str, Source]):
    """The sources of a curated corpus, by name."""

    def __init__(self, sources: Mapping[str, Source], tokenizer: str | None = None):
        self._sources = dict(sources)
        self.tokenizer = tokenizer
        eos = {s.eos_id for s in self._sources.values()}
        if len(eos) > 1:  # one tokenizer packs a corpus; different eos ids mean mixed corpora
            raise ValueError(f"sources disagree on the eos id: {sorted(eos)}")

    @classmethod
    def from_corpus_json(cls, path: str | Path) -> CorpusSources:
        """Read a corpus's `corpus.json` (a folder holding it, or the file). Source folders given
        relative resolve against the file's folder."""
        path = Path(path)
        if path.is_dir():
            path = path / "corpus.json"
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"no corpus record at {path}") from None
        entries = record.get("sources") or {}
        if not entries:
            raise ValueError(f"{path} lists no sources")
        sources = {}
        for name, entry in entries.items():
            folder = local_folder(entry["uri"])  # a remote store's artifact: its checked local copy
            folder = folder if folder.is_absolute() else path.parent / folder
            if not folder.is_dir():
                raise FileNotFoundError(f"{path} lists source {name!r} at {folder}, which does not exist")
            sources[name] = Source(name, folder, entry)
        tokenizer = record.get("tokenizer")
        return cls(sources, tokenizer=str(local_folder(tokenizer)) if tokenizer else None)

    @classmethod
    def from_folders(cls, folders: Mapping[str, str | Path], tokenizer: str | None = None) -> CorpusSources:
        """Packed folders by source name, counts read from each folder's meta.json."""
        return cls({name: Source(name, Path(f), read_meta(Path(f))) for name, f in folders.items()}, tokenizer)

    @property
    def eos_id(self) -> int:
        return next(iter(self._sources.values())).eos_id

    @property
    def vocab_size(self) -> int:
        return max(s.vocab_size for s in self._sources.values())

    def __getitem__(self, name: str) -> Source:
        return self._sources[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)

    def __repr__(self) -> str:
        return f"CorpusSources({', '.join(map(repr, self._sources.values()))})"


# --- keyed permutations ----------------------------------------------------------------------------


def _key(*parts: Any) -> int:
    """A 64-bit key from any printable parts; stable across runs, machines and library versions."""
    return int.from_bytes(hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest(), "little")


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a fast, well-mixing bijection on uint64 (array arithmetic wraps)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def permute(index: np.ndarray | int, n: int, key: int) -> np.ndarray:
    """The image of `index` under a pseudo-random permutation of range(n) chosen by `key`.

    A 4-round balanced Feistel network permutes the smallest even-bit domain holding n (less than
    4n values); values landing outside range(n) are mapped again until they fall inside ("cycle
    walking"), which keeps it a bijection on range(n). No table of n entries is built.
    """
    idx = np.atleast_1d(np.asarray(index, dtype=np.int64))
    if n < 1 or (idx.size and (idx.min() < 0 or idx.max() >= n)):
        raise ValueError(f"indices must lie in range({n})")
    if n == 1:
        return np.zeros_like(idx)
    half = np.uint64(((n - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << int(half)) - 1)
    round_keys = [np.uint64(_key(key, r)) for r in range(4)]

    def once(x: np.ndarray) -> np.ndarray:
        left, right = x >> half, x & mask
        for k in round_keys:
            left, right = right, left ^ (_mix64(right ^ k) & mask)
        return (left << half) | right

    x = once(idx.astype(np.uint64))
    outside = x >= n
    while outside.any():
        x[outside] = once(x[outside])
        outside = x >= n
    return x.astype(np.int64)


# --- plans -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourcePlan:
    """What one stage takes from one source. Tokens count predicted positions (seq_len a sequence)."""

    name: str
    weight: float  # normalised weight asked for
    share: float  # weight realised by the pattern (slots / PERIOD)
    sequences: int  # sequences this stage takes
    tokens: int  # sequences * seq_len
    available_tokens: int  # train tokens of the source
    windows: int  # distinct sequences the source holds at this seq_len (one epoch)
    start_index: int  # sequences taken by earlier stages (where this stage's walk starts)
    epochs: float  # this stage's reads of the source
    epochs_total: float  # reads over the run up to the end of this stage


@dataclass(frozen=True)
class StagePlan:
    """A stage's budget resolved against the corpus: everything `batches` needs, and the numbers to
    log. Build it with `plan_stage` / `plan_stages`."""

    stage: str
    seq_len: int
    batch_size: int
    grad_accum: int
    steps: int
    max_epochs: float
    sources: dict[str, SourcePlan]
    corpus: CorpusSources = field(repr=False, compare=False)
    # the interleaving pattern: source (index into `_names`) and its slot rank, per pattern position
    _names: tuple[str, ...] = field(repr=False, default=())
    _quota: np.ndarray = field(repr=False, compare=False, default=None)
    _pattern: np.ndarray = field(repr=False, compare=False, default=None)
    _slot: np.ndarray = field(repr=False, compare=False, default=None)

    @property
    def name(self) -> str:
        return self.stage

    @property
    def sequences_per_step(self) -> int:
        return self.batch_size * self.grad_accum

    @property
    def tokens_per_step(self) -> int:
        return self.sequences_per_step * self.seq_len

    @property
    def tokens(self) -> int:
        return self.steps * self.tokens_per_step

    def consumed_after(self) -> dict[str, int]:
        """Train tokens taken from each source by the end of this stage (earlier stages included):
        the `consumed` argument for planning the next stage."""
        return {n: (p.start_index + p.sequences) * self.seq_len for n, p in self.sources.items()}

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers for logging (MLflow params, a plan artifact)."""
        return {
            "stage": self.stage,
            "steps": self.steps,
            "seq_len": self.seq_len,
            "sequences_per_step": self.sequences_per_step,
            "tokens": self.tokens,
            "sources": {
                n: {
                    "weight": round(p.weight, 6),
                    "share": round(p.share, 6),
                    "sequences": p.sequences,
                    "tokens": p.tokens,
                    "available_tokens": p.available_tokens,
                    "epochs": round(p.epochs, 4),
                    "epochs_total": round(p.epochs_total, 4),
                }
                for n, p in self.sources.items()
            },
        }

    def describe(self) -> str:
        """A few lines for a log: budget, then each source's tokens and repetition."""
        lines = [f"stage {self.stage!r}: {self.steps} steps x {self.tokens_per_step:,} tokens = {self.tokens:,} tokens"]
        for p in self.sources.values():
            note = f"; {p.epochs_total:.2f} over the run so far" if p.start_index else ""
            lines.append(
                f"  {p.name}: {p.share:.1%} -> {p.tokens:,} tokens of its {p.available_tokens:,} "
                f"({p.epochs:.2f} epochs{note})"
            )
        return "\n".join(lines)


def validate_mixture(stage: StageConfig, sources: Mapping[str, Source]) -> None:
    """Refuse a mixture that names a source the corpus does not have, or weighs one that cannot
    give a single sequence of the stage's length."""
    unknown = sorted(set(stage.mixture) - set(sources))
    if unknown:
        raise ValueError(
            f"stage {stage.name!r}: mixture names source(s) {', '.join(map(repr, unknown))} that the corpus does "
            f"not have; available: {', '.join(sources) or '(none)'}"
        )
    for name, weight in stage.mixture.items():
        if weight <= 0:
            continue
        n_tokens = sources[name].n_tokens("train")
        if n_tokens == 0:
            raise ValueError(
                f"stage {stage.name!r}: mixture gives source {name!r} weight {weight:.3g} but its train split has 0 tokens"
            )
        if n_tokens < stage.seq_len + 1:
            raise ValueError(
                f"stage {stage.name!r}: mixture gives source {name!r} weight {weight:.3g} but its train split has "
                f"{n_tokens} tokens, fewer than one sequence of seq_len={stage.seq_len} needs ({stage.seq_len + 1})"
            )


def _quotas(weights: np.ndarray, period: int) -> np.ndarray:
    """Slots per source out of `period`, proportional to the weights (largest remainder); every
    positive weight gets at least one slot so no asked-for source silently disappears."""
    exact = weights * period
    quota = np.floor(exact).astype(np.int64)
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - quota[i]), i))
    for i in order[: period - int(quota.sum())]:
        quota[i] += 1
    for i in np.flatnonzero((weights > 0) & (quota == 0)):
        quota[i] = 1
        quota[int(np.argmax(quota))] -= 1
    return quota


def _interleave(quota: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spread each source's slots evenly over the period (slot i of a source with q slots sits at
    (i + 1/2) / q of the way), so any run of consecutive positions carries the mixture to within
    about one sequence per source. Returns (source per position, rank of the slot within its
    source)."""
    src = np.repeat(np.arange(len(quota)), quota)
    rank = np.concatenate([np.arange(q) for q in quota]) if len(quota) else np.zeros(0, np.int64)
    times = (rank + 0.5) / quota[src]
    order = np.lexsort((src, times))  # by time, ties by source index
    return src[order], rank[order]


def plan_stage(
    stage: StageConfig,
    sources: CorpusSources,
    batch_size: int,
    grad_accum: int = 1,
    *,
    max_epochs: float = 4.0,
    consumed: Mapping[str, int] | None = None,
) -> StagePlan:
    """Resolve a stage against the corpus.

    `consumed`: train tokens earlier stages took from each source (`StagePlan.consumed_after`);
    this stage continues each source's walk from there and counts repetition over the whole run.
    Raises ValueError for a bad mixture or a source read more than `max_epochs` times.
    """
    if batch_size < 1 or grad_accum < 1:
        raise ValueError(f"batch_size and grad_accum must be at least 1; got {batch_size} and {grad_accum}")
    validate_mixture(stage, sources)
    consumed = consumed or {}
    seq_len = stage.seq_len
    per_step = batch_size * grad_accum
    steps = stage.steps if stage.steps is not None else math.ceil(stage.tokens / (per_step * seq_len))
    stage_tokens = steps * per_step * seq_len

    # Sorted names: the plan does not depend on the order the mixture was written in.
    names = tuple(sorted(n for n, w in stage.mixture.items() if w > 0))
    weights = np.array([stage.mixture[n] for n in names])
    quota = _quotas(weights, PERIOD)
    pattern, slot = _interleave(quota)
    full, rest = divmod(steps * per_step, PERIOD)
    taken = full * quota + np.bincount(pattern[:rest], minlength=len(names))

    plans: dict[str, SourcePlan] = {}
    for i, name in enumerate(names):
        src = sources[name]
        windows = src.windows(seq_len)
        start = int(consumed.get(name, 0)) // seq_len
        n = int(taken[i])
        plan = SourcePlan(
            name=name,
            weight=float(weights[i]),
            share=float(quota[i] / PERIOD),
            sequences=n,
            tokens=n * seq_len,
            available_tokens=src.n_tokens("train"),
            windows=windows,
            start_index=start,
            epochs=n / windows,
            epochs_total=(start + n) / windows,
        )
        if plan.epochs_total > max_epochs:
            earlier = f" ({start / windows:.2f} of them in earlier stages)" if start else ""
            raise ValueError(
                f"stage {stage.name!r} would read source {name!r} {plan.epochs_total:.2f} times{earlier}, more than "
                f"max_epochs={max_epochs:g}: the stage asks it for {plan.tokens:,} tokens ({plan.share:.1%} of "
                f"{stage_tokens:,}) and it has {plan.available_tokens:,} train tokens. Lower its weight or the "
                f"stage's budget, add data to it, or raise max_epochs."
            )
        plans[name] = plan
    return StagePlan(
        stage=stage.name,
        seq_len=seq_len,
        batch_size=batch_size,
        grad_accum=grad_accum,
        steps=steps,
        max_epochs=max_epochs,
        sources=plans,
        corpus=sources,
        _names=names,
        _quota=quota,
        _pattern=pattern,
        _slot=slot,
    )


def plan_stages(config: PretrainConfig, sources: CorpusSources) -> list[StagePlan]:
    """Plan every stage in order, each continuing the previous stages' walks through the data."""
    plans: list[StagePlan] = []
    consumed: dict[str, int] = {}
    for stage in config.stages:
        plan = plan_stage(
            stage, sources, config.batch_size, config.grad_accum, max_epochs=config.max_epochs, consumed=consumed
        )
        consumed.update(plan.consumed_after())
        plans.append(plan)
    return plans


# --- batches ---------------------------------------------------------------------------------------


@dataclass
class Batch:
    """One micro-batch. `doc_ids` number the documents of each row from 0; compare them within a row
    only (positions i, j of a row may attend iff doc_ids match and j <= i).

    `labels` are already shifted: logits[:, t] are scored against labels[:, t], so every position
    has a target, the last one included (the window reads one token beyond the inputs). Use
    `F.cross_entropy(logits.flatten(0, 1), labels.flatten())`. A transformers model shifts its
    `labels=` argument itself; give these as `shift_labels=` instead, never as `labels=` alone.
    """

    input_ids: torch.Tensor  # int64 [B, T]
    labels: torch.Tensor  # int64 [B, T]: next token, IGNORE_INDEX across a document boundary
    doc_ids: torch.Tensor  # int64 [B, T]
    sources: list[str]  # source of each row
    stage: str
    step: int  # data position (the stage-local step the batch belongs to)
    micro: int  # micro-batch within the step, 0 .. grad_accum - 1

    @property
    def n_targets(self) -> int:
        """Positions that count in the loss; sum over micro-batches to normalise an accumulated step."""
        return int((self.labels != IGNORE_INDEX).sum())

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.labels.to(device),
            self.doc_ids.to(device),
            self.sources,
            self.stage,
            self.step,
            self.micro,
        )


def _read(rows: list[tuple[Source, int]], split: str, seq_len: int) -> tuple[torch.Tensor, ...]:
    """input ids, labels and row-local document ids of windows (source, token offset)."""
    inputs = np.empty((len(rows), seq_len), dtype=np.int64)
    labels = np.empty_like(inputs)
    docs = np.empty_like(inputs)
    for r, (source, start) in enumerate(rows):
        tokens, offsets = source.split(split)
        window = np.asarray(tokens[start : start + seq_len + 1], dtype=np.int64)
        ids = document_ids(offsets, start, seq_len + 1)
        inputs[r] = window[:-1]
        labels[r] = np.where(ids[1:] == ids[:-1], window[1:], IGNORE_INDEX)
        docs[r] = ids[:-1] - ids[0]
    return torch.from_numpy(inputs), torch.from_numpy(labels), torch.from_numpy(docs)


def window_starts(plan: StagePlan, step: int, seed: int) -> list[tuple[str, int]]:
    """(source, token offset of the window) for each sequence of a step, in row order: the whole
    sampling decision, a pure function of (plan, step, seed)."""
    if step < 0:
        raise ValueError(f"step must be >= 0; got {step}")
    per_step = plan.sequences_per_step
    g = np.arange(step * per_step, (step + 1) * per_step, dtype=np.int64)
    pos = g % PERIOD
    src = plan._pattern[pos]
    start_index = np.array([plan.sources[n].start_index for n in plan._names], dtype=np.int64)
    index = start_index[src] + (g // PERIOD) * plan._quota[src] + plan._slot[pos]

    window = np.empty_like(index)
    for s in np.unique(src):
        name = plan._names[s]
        n_windows = plan.sources[name].windows
        rows = src == s
        epoch, within = np.divmod(index[rows], n_windows)
        picked = np.empty_like(within)
        for e in np.unique(epoch):
            in_epoch = epoch == e
            picked[in_epoch] = permute(within[in_epoch], n_windows, _key("train", seed, name, plan.seq_len, int(e)))
        window[rows] = picked
    return [(plan._names[s], int(w) * plan.seq_len) for s, w in zip(src, window)]


def step_batches(plan: StagePlan, step: int, seed: int) -> list[Batch]:
    """The `grad_accum` micro-batches of one step of a stage.

    `step` is the stage-local data position. It may run past `plan.steps` (a rollback that skipped
    batches still trains the stage's number of steps); the walk then simply continues.
    """
    starts = window_starts(plan, step, seed)
    out = []
    for micro in range(plan.grad_accum):
        chunk = starts[micro * plan.batch_size : (micro + 1) * plan.batch_size]
        tensors = _read([(plan.corpus[name], start) for name, start in chunk], "train", plan.seq_len)
        out.append(Batch(*tensors, [name for name, _ in chunk], plan.stage, step, micro))
    return out


def batches(plan: StagePlan, start_step: int = 0, seed: int = 0, stop_step: int | None = None) -> Iterator[Batch]:
    """Micro-batches of steps start_step .. stop_step - 1 (default: to the end of the stage), in
    order; step k's batches are the same whether or not steps before k were iterated."""
    stop = plan.steps if stop_step is None else stop_step
    for step in range(start_step, stop):
        yield from step_batches(plan, step, seed)


def val_batches(
    sources: CorpusSources,
    seq_len: int,
    n: int,
    seed: int = 0,
    *,
    batch_size: int = 8,
    names: list[str] | None = None,
) -> dict[str, list[Batch]]:
    """Up to `n` fixed validation batches per source (all of `names`, default every source).

    Distinct windows of the val split chosen by a seeded permutation: the same ones at every
    evaluation and across resumed runs, so losses are comparable over time. A val split shorter
    than one window gives one shorter row; an empty one gives no batches.
    """
    if n < 1 or batch_size < 1 or seq_len < 1:
        raise ValueError(f"n, batch_size and seq_len must be at least 1; got {n}, {batch_size}, {seq_len}")
    names = list(sources) if names is None else names
    unknown = sorted(set(names) - set(sources))
    if unknown:
        raise ValueError(f"no source(s) {', '.join(map(repr, unknown))} in the corpus; available: {', '.join(sources)}")
    out: dict[str, list[Batch]] = {}
    for name in names:
        src = sources[name]
        n_tokens = src.n_tokens("val")
        out[name] = []
        if n_tokens < 2:
            continue
        n_windows = src.windows(seq_len, "val")
        if n_windows == 0:
            out[name].append(Batch(*_read([(src, 0)], "val", n_tokens - 1), [name], "val", 0, 0))
            continue
        take = min(n * batch_size, n_windows)
        starts = permute(np.arange(take), n_windows, _key("val", seed, name, seq_len)) * seq_len
        for i in range(0, take, batch_size):
            rows = [(src, int(start)) for start in starts[i : i + batch_size]]
            out[name].append(Batch(*_read(rows, "val", seq_len), [name] * len(rows), "val", i // batch_size, 0))
    return out
