"""Pretraining data: config checks, mixture planning and its refusals, labels at document boundaries,
and batches that depend only on (seed, plan, step)."""

from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from smolforge.tasks.curate.documents import Doc
from smolforge.tasks.curate.pack import pack_documents
from smolforge.tasks.train.config import PretrainConfig, StageConfig
from smolforge.tasks.train.data import (
    IGNORE_INDEX,
    PERIOD,
    CorpusSources,
    batches,
    permute,
    plan_stage,
    plan_stages,
    step_batches,
    val_batches,
    validate_mixture,
    window_starts,
)

EOS = 0
SEQ = 16


class NumberTokenizer:
    """Texts of space-separated integers encode to those integers: tests can write exact tokens."""

    eos_token_id = EOS
    name_or_path = "numbers"

    def __len__(self) -> int:
        return 50_000

    def __call__(self, texts, **_):
        return {"input_ids": [[int(w) for w in t.split()] for t in texts]}


def _docs(source: str, n: int, seed: int) -> list[Doc]:
    rng = random.Random(seed)
    counter = 1
    docs = []
    for i in range(n):
        length = rng.randint(3, 50)
        words = [str(1 + (counter + j) % 49_000) for j in range(length)]  # never the eos id 0
        counter += length
        docs.append(Doc(id=f"{source}/{i}", source=source, text=" ".join(words)))
    return docs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A corpus.json over three packed sources: big (~1,000 train tokens), small (~150), empty."""
    root = tmp_path_factory.mktemp("corpus")
    entries = {}
    for name, n_docs in (("big", 40), ("small", 6), ("empty", 0)):
        folder = root / name
        meta = pack_documents(_docs(name, n_docs, seed=len(name)), NumberTokenizer(), folder, val_fraction=0.2)
        entries[name] = {"uri": str(folder), **meta}
    (root / "corpus.json").write_text(json.dumps({"sources": entries, "tokenizer": "numbers"}))
    return root / "corpus.json"


@pytest.fixture
def sources(corpus) -> CorpusSources:
    return CorpusSources.from_corpus_json(corpus)


def stage(**kw) -> StageConfig:
    return StageConfig(**{"name": "s1", "steps": 10, "mixture": {"big": 3, "small": 1}, "seq_len": SEQ, **kw})


# --- config ----------------------------------------------------------------------------------------


def test_stage_needs_exactly_one_budget_and_a_sane_mixture():
    assert stage().mixture == {"big": 0.75, "small": 0.25}  # normalised
    with pytest.raises(ValidationError, match="exactly one budget.*tokens=100, steps=10"):
        stage(tokens=100)
    with pytest.raises(ValidationError, match="exactly one budget"):
        stage(steps=None)
    with pytest.raises(ValidationError, match=r"finite and >= 0.*'small': -1"):
        stage(mixture={"big": 1, "small": -1})
    with pytest.raises(ValidationError, match="sum to more than 0"):
        stage(mixture={"big": 0})
    with pytest.raises(ValidationError, match="unknown|Extra inputs"):
        StageConfig(name="x", steps=1, mixture={"a": 1}, epochs=3)


def test_pretrain_config_defaults_and_unique_stages():
    cfg = PretrainConfig()
    assert [s.name for s in cfg.stages] == ["stable", "mix", "decay"]
    assert cfg.sequences_per_step == cfg.batch_size * cfg.grad_accum
    with pytest.raises(ValidationError, match="unique, repeated: a"):
        PretrainConfig(stages=[stage(name="a"), stage(name="a")])
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        PretrainConfig(batch_size=0)
    with pytest.raises(ValidationError, match="'auto', 'cpu', 'cuda' or 'mps'"):
        PretrainConfig(device="tpu")


# --- sources and plans -----------------------------------------------------------------------------


def test_sources_open_lazily_and_pickle_without_data(sources):
    big = sources["big"]
    assert big._open == {} and sources.eos_id == EOS and sources.tokenizer == "numbers"
    tokens, offsets = big.split("train")
    assert len(tokens) == big.n_tokens("train") == offsets[-1]
    clone = pickle.loads(pickle.dumps(big))
    assert clone._open == {} and np.array_equal(clone.split("train")[0], tokens)


def test_mixture_naming_a_missing_or_empty_source_is_refused(sources):
    with pytest.raises(ValueError, match=r"'nope'.*available: big, small, empty"):
        validate_mixture(stage(mixture={"big": 1, "nope": 1}), sources)
    with pytest.raises(ValueError, match="'empty' weight 0.5 but its train split has 0 tokens"):
        validate_mixture(stage(mixture={"big": 1, "empty": 1}), sources)
    validate_mixture(stage(mixture={"big": 1, "empty": 0}), sources)  # a zero weight is fine
    with pytest.raises(ValueError, match=r"'small'.*fewer than one sequence of seq_len=4096"):
        validate_mixture(stage(seq_len=4096, mixture={"small": 1}), sources)


def test_plan_counts_follow_the_mixture_step_by_step(sources):
    plan = plan_stage(stage(steps=25), sources, batch_size=4, grad_accum=2)
    assert plan.steps == 25 and plan.tokens == 25 * 8 * SEQ
    assert sum(p.sequences for p in plan.sources.values()) == 200
    assert plan.sources["big"].sequences == 150 and plan.sources["small"].sequences == 50
    for k in range(25):  # every step carries the mixture to within one sequence
        names = [n for n, _ in window_starts(plan, k, seed=0)]
        assert abs(names.count("small") - 2) <= 1
    taken = [n for k in range(plan.steps) for n, _ in window_starts(plan, k, seed=0)]
    assert {n: taken.count(n) for n in ("big", "small")} == {n: p.sequences for n, p in plan.sources.items()}
    summary = plan.summary()
    assert summary["sources"]["small"]["epochs"] == pytest.approx(50 / sources["small"].windows(SEQ), abs=1e-4)
    json.dumps(summary)
    assert "small" in plan.describe()


def test_counts_past_one_pattern_period(sources):
    """More sequences than the pattern's period: the plan's counts still match what is sampled."""
    mix = {"big": 0.7, "small": 0.3}
    plan = plan_stage(stage(steps=17, mixture=mix), sources, batch_size=512, max_epochs=1e9)
    taken = [n for k in range(plan.steps) for n, _ in window_starts(plan, k, seed=0)]
    assert len(taken) == 17 * 512 > PERIOD
    for name, p in plan.sources.items():
        assert taken.count(name) == p.sequences and abs(p.sequences - mix[name] * len(taken)) <= 2
        # and the walk within a source stays a walk: every window read before any is read again
        starts = [s for k in range(plan.steps) for n, s in window_starts(plan, k, seed=0) if n == name]
        w = sources[name].windows(SEQ)
        assert len(set(starts[:w])) == w


def test_token_budget_rounds_up_to_whole_steps(sources):
    plan = plan_stage(stage(steps=None, tokens=1000, mixture={"big": 1}), sources, batch_size=2)
    assert plan.steps == 32 and plan.tokens == 32 * 2 * SEQ  # 1000 / 32 = 31.25


def test_too_much_repetition_is_refused_with_the_numbers(sources):
    small = sources["small"]
    windows = small.windows(SEQ)
    ok = plan_stage(stage(steps=windows * 3, mixture={"small": 1}), sources, batch_size=1, max_epochs=4)
    assert ok.sources["small"].epochs == 3
    with pytest.raises(ValueError) as err:
        plan_stage(stage(steps=windows * 5, mixture={"small": 1}), sources, batch_size=1, max_epochs=4)
    msg = str(err.value)
    assert "'small' 5.00 times" in msg and "max_epochs=4" in msg
    assert f"{windows * 5 * SEQ:,} tokens" in msg and f"{small.n_tokens('train'):,} train tokens" in msg

    # repetition counts over the whole run: two stages of 3 epochs each make 6
    cfg = PretrainConfig(
        batch_size=1,
        stages=[stage(name="a", steps=windows * 3, mixture={"small": 1}), stage(name="b", steps=windows * 3, mixture={"small": 1})],
    )
    with pytest.raises(ValueError, match=r"stage 'b'.*6.00 times \(3.00 of them in earlier stages\)"):
        plan_stages(cfg, sources)


# --- batches -----------------------------------------------------------------------------------------


def test_labels_and_doc_ids_respect_document_boundaries(sources):
    plan = plan_stage(stage(steps=12), sources, batch_size=3, grad_accum=2)
    seen_boundary = False
    for k in range(plan.steps):
        starts = window_starts(plan, k, seed=5)
        rows = [r for b in step_batches(plan, k, seed=5) for r in zip(b.input_ids, b.labels, b.doc_ids, b.sources)]
        assert len(rows) == len(starts) == 6
        for (inputs, labels, docs, name), (name2, start) in zip(rows, starts):
            assert name == name2
            tokens = np.asarray(sources[name].split("train")[0][start : start + SEQ + 1], dtype=np.int64)
            assert inputs.tolist() == tokens[:-1].tolist()
            assert docs[0] == 0 and (torch.diff(docs) >= 0).all()
            for t in range(SEQ):
                if inputs[t] == EOS:  # end of a document: the next one starts, nothing to predict
                    assert labels[t] == IGNORE_INDEX
                    if t + 1 < SEQ:
                        assert docs[t + 1] == docs[t] + 1
                        seen_boundary = True
                else:  # inside a document, including the token that predicts its eos
                    assert labels[t] == tokens[t + 1]
                    if t + 1 < SEQ:
                        assert docs[t + 1] == docs[t]
    assert seen_boundary


def _flat(bs) -> list:
    return [(b.step, b.micro, b.sources, b.input_ids.tolist(), b.labels.tolist(), b.doc_ids.tolist()) for b in bs]


def test_resuming_at_step_k_gives_the_same_batches(corpus, sources):
    plan = plan_stage(stage(steps=20), sources, batch_size=2, grad_accum=2)
    full = _flat(batches(plan, 0, seed=3))
    assert len(full) == 40 and [f[:2] for f in full[:3]] == [(0, 0), (0, 1), (1, 0)]
    # a fresh process would rebuild sources and plan from the same files
    again = plan_stage(stage(steps=20), CorpusSources.from_corpus_json(corpus), batch_size=2, grad_accum=2)
    assert _flat(batches(again, 13, seed=3)) == full[26:]
    assert _flat(batches(plan, 5, seed=3, stop_step=6)) == full[10:12]
    assert _flat(batches(plan, 0, seed=4)) != full
    assert len(step_batches(plan, 57, seed=3)) == 2  # past the stage's end (skipped batches) still works


def test_each_epoch_reads_every_window_once_in_a_new_order(sources):
    windows = sources["small"].windows(SEQ)
    plan = plan_stage(stage(steps=2 * windows, mixture={"small": 1}), sources, batch_size=1)
    starts = [s for k in range(plan.steps) for _, s in window_starts(plan, k, seed=1)]
    grid = list(range(0, windows * SEQ, SEQ))
    first, second = starts[:windows], starts[windows:]
    assert sorted(first) == grid and sorted(second) == grid and first != second


def test_later_stages_continue_the_walk_through_unseen_windows(sources):
    windows = sources["big"].windows(SEQ)
    half = windows // 2
    cfg = PretrainConfig(
        batch_size=1,
        stages=[stage(name="a", steps=half, mixture={"big": 1}), stage(name="b", steps=half, mixture={"big": 1})],
    )
    a, b = plan_stages(cfg, sources)
    assert b.sources["big"].start_index == half and b.sources["big"].epochs_total == pytest.approx(2 * half / windows)
    seen = [s for p in (a, b) for k in range(p.steps) for _, s in window_starts(p, k, seed=0)]
    assert len(set(seen)) == len(seen) == 2 * half


def test_permute_is_a_keyed_bijection():
    for n in (1, 2, 3, 7, 64, 65, 1000, 4099):
        assert sorted(permute(np.arange(n), n, key=11).tolist()) == list(range(n))
    assert permute(np.arange(100), 100, 1).tolist() != permute(np.arange(100), 100, 2).tolist()
    assert permute(5, 100, 1)[0] == permute(np.arange(100), 100, 1)[5]
    with pytest.raises(ValueError):
        permute(np.array([100]), 100, 1)


def test_val_batches_are_fixed_distinct_windows(sources):
    vb = val_batches(sources, SEQ, n=2, seed=0, batch_size=2)
    again = val_batches(CorpusSources.from_corpus_json(sources["big"].folder.parent / "corpus.json"), SEQ, 2, 0, batch_size=2)
    assert vb.keys() == {"big", "small", "empty"} and vb["empty"] == []
    with pytest.raises(ValueError, match="'nope'.*available: big, small, empty"):
        val_batches(sources, SEQ, 1, names=["nope"])
    assert _flat(vb["big"]) == _flat(again["big"])
    rows = [tuple(r.tolist()) for b in vb["big"] for r in b.input_ids]
    assert len(rows) == min(4, sources["big"].windows(SEQ, "val")) == len(set(rows))
    assert all(b.sources == ["big"] * len(b.sources) for b in vb["big"])
    # a val split shorter than one window (small's has 26 tokens) gives one shorter row
    short = val_batches(sources, 64, n=3, names=["small"])["small"]
    n_val = sources["small"].n_tokens("val")
    assert n_val < 65 and len(short) == 1 and short[0].input_ids.shape == (1, n_val - 1)
