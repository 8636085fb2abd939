"""Distillation pieces on micro models: the loss, the teacher checks, the top-k store and the
training function's contract with sweeps (on_eval, nothing written on failure)."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from train_fixtures import WORDS, build_corpus

from smolforge.errors import ConfigError
from smolforge.flows.config import load_config
from smolforge.model_source import ModelSourceError, locate
from smolforge.models.architecture import build_model
from smolforge.models.config import ModelConfig
from smolforge.tasks.curate.tokenizer import load_tokenizer, train_tokenizer
from smolforge.tasks.distill import teacher as teacher_mod
from smolforge.tasks.distill.config import DistillConfig
from smolforge.tasks.distill.loss import distill_loss, full_kl, topk_kl
from smolforge.tasks.distill.teacher import (
    TeacherError,
    TopKStore,
    check_teacher,
    require_same_tokenizer,
    tokenizer_differences,
    write_topk,
)
from smolforge.tasks.distill.train import distill_student, plan_for
from smolforge.tasks.train.data import IGNORE_INDEX, step_batches

MICRO_TEACHER = ModelConfig(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128, max_seq_len=64)
MICRO_STUDENT = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64, "max_seq_len": 64}


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """A synthetic packed corpus (sources a, b; 300-token tokenizer) and a random teacher folder."""
    root = tmp_path_factory.mktemp("distill")
    sources = build_corpus(root)
    tok = load_tokenizer(sources.tokenizer)
    model = build_model(MICRO_TEACHER, vocab_size=len(tok), bos_id=0, eos_id=1, pad_id=2, seed=1)
    model.save_pretrained(root / "teacher")
    tok.save_pretrained(root / "teacher")
    return sources, root / "teacher"


def micro_config(**over) -> DistillConfig:
    settings = {
        "student": MICRO_STUDENT,
        "data": {"name": "distill", "steps": 6, "seq_len": 32, "mixture": {"a": 1, "b": 1}},
        "batch_size": 4, "eval_every": 3, "eval_batches": 1, "log_every": 2, "optimizer": {"lr": 1e-2},
        "schedule": {"warmup_steps": 2, "decay_fraction": 0.5}, "device": "cpu",
    }
    return DistillConfig(**{**settings, **over})


# --- the loss --------------------------------------------------------------------------------------


def random_logits(seed, shape=(2, 5, 11)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3


def test_kl_is_zero_for_the_teacher_itself_and_positive_otherwise():
    t, s = random_logits(0), random_logits(1)
    assert full_kl(t, t, 2.0).abs().max() < 1e-6
    assert (full_kl(s, t, 2.0) > 0).all()


def test_loss_mixes_kl_times_t_squared_with_ce_and_skips_ignored_positions():
    s, t = random_logits(1).requires_grad_(), random_logits(0)
    labels = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(2))
    labels[0, 2] = labels[1, 4] = IGNORE_INDEX
    keep = labels != IGNORE_INDEX
    out = distill_loss(s, labels, temperature=3.0, alpha=0.25, teacher_logits=t)
    kl = full_kl(s, t, 3.0)[keep].sum()
    ce = F.cross_entropy(s[keep], labels[keep], reduction="sum")
    assert torch.allclose(out.kl, kl) and torch.allclose(out.ce, ce)
    assert torch.allclose(out.loss, 0.25 * 9 * kl + 0.75 * ce)
    # what the logits say at an ignored position changes nothing
    s2 = s.detach().clone()
    s2[0, 2] += 100
    assert torch.allclose(distill_loss(s2, labels, temperature=3.0, alpha=0.25, teacher_logits=t).loss, out.loss)
    out.loss.backward()
    assert s.grad[0, 2].abs().max() == 0 and s.grad[0, 1].abs().max() > 0


def test_alpha_zero_is_plain_cross_entropy_and_needs_no_teacher():
    s = random_logits(1)
    labels = torch.randint(0, 11, (2, 5))
    out = distill_loss(s, labels, temperature=2.0, alpha=0.0)
    assert torch.allclose(out.loss, F.cross_entropy(s.flatten(0, 1), labels.flatten(), reduction="sum"))
    with pytest.raises(ValueError, match="needs the teacher"):
        distill_loss(s, labels, temperature=2.0, alpha=0.5)


def test_topk_kl_equals_the_full_kl_when_k_is_the_vocabulary_and_approximates_it_below():
    s, t = random_logits(1), random_logits(0) * 2
    lp = torch.log_softmax(t, -1)
    full = full_kl(s, t, 2.0)
    every = lp.topk(11, -1)
    assert torch.allclose(topk_kl(s, every.values, every.indices, 1.0), full_kl(s, t, 1.0), atol=1e-4)
    assert torch.allclose(topk_kl(s, every.values, every.indices, 2.0), full, atol=1e-3)
    top = lp.topk(6, -1)
    approx = topk_kl(s, top.values, top.indices, 1.0)
    # a coarsening: never above the full KL (data-processing inequality), and zero for the teacher itself
    assert (approx >= -1e-6).all() and (approx <= full_kl(s, t, 1.0) + 1e-5).all()
    assert topk_kl(t, top.values, top.indices, 2.0).abs().max() < 1e-5


@pytest.mark.parametrize(
    "override, field",
    [("distill.alpha=1.5", "distill.alpha"), ("distill.alpha=-0.1", "distill.alpha"),
     ("distill.temperature=0", "distill.temperature"), ("distill.temperature=-1", "distill.temperature"),
     ("distill.top_k=0", "distill.top_k")],
)
def test_bad_loss_settings_are_refused_by_the_config(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config("tiny", overrides=[override])


def test_distill_loss_refuses_bad_alpha_and_temperature_when_called_directly():
    s, labels = random_logits(1), torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="alpha"):
        distill_loss(s, labels, temperature=1.0, alpha=1.2, teacher_logits=s)
    with pytest.raises(ValueError, match="temperature"):
        distill_loss(s, labels, temperature=0.0, alpha=0.5, teacher_logits=s)


# --- the teacher checks ----------------------------------------------------------------------------


def other_tokenizer(tmp_path: Path):
    texts = [" ".join(reversed(WORDS)) + f" {i} zebra quartz" for i in range(200)]
    train_tokenizer(texts, vocab_size=300, out_dir=tmp_path / "other")
    return load_tokenizer(str(tmp_path / "other"))


def test_the_same_tokenizer_passes_and_a_different_one_is_refused_with_the_differences(micro, tmp_path):
    sources, teacher = micro
    tok = load_tokenizer(sources.tokenizer)
    assert tokenizer_differences(load_tokenizer(str(teacher)), tok) == []
    with pytest.raises(TeacherError, match=r"is not the student's .*tokens have different ids") as err:
        require_same_tokenizer(other_tokenizer(tmp_path), tok, "other", "corpus")
    assert "share one tokenizer" in str(err.value)


def test_a_teacher_with_another_tokenizer_is_refused_before_training(micro, tmp_path):
    sources, _ = micro
    foreign = tmp_path / "foreign"
    model = build_model(MICRO_TEACHER, vocab_size=300, bos_id=0, eos_id=1, pad_id=2, seed=1)
    model.save_pretrained(foreign)
    other_tokenizer(tmp_path).save_pretrained(foreign)
    student = ModelConfig(**MICRO_STUDENT)
    with pytest.raises(TeacherError, match="tokenizer"):
        check_teacher(foreign, load_tokenizer(sources.tokenizer), sources.tokenizer, student)
    with pytest.raises(TeacherError, match="tokenizer"):
        distill_student(micro_config(), foreign, sources, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_student_not_smaller_than_the_teacher_is_refused(micro):
    sources, teacher = micro
    tok = load_tokenizer(sources.tokenizer)
    sizes = check_teacher(teacher, tok, sources.tokenizer, ModelConfig(**MICRO_STUDENT))
    assert sizes["student_parameters"] < sizes["teacher_parameters"]
    with pytest.raises(TeacherError, match="must be smaller than the teacher"):
        check_teacher(teacher, tok, sources.tokenizer, MICRO_TEACHER)


def test_unknown_teachers_are_named_in_the_error(tmp_path, session_home):
    def locate_teacher(spec: str) -> None:
        locate(spec, tmp_path, "distill.teacher")

    with pytest.raises(ModelSourceError, match=r"distill.teacher=.*no such folder"):
        locate_teacher(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match="holds no transformers model"):
        locate_teacher(str(tmp_path / "empty"))
    with pytest.raises(ModelSourceError, match=r"distill.teacher=models:/no-such-model@candidate: no registered model 'no-such-model'; registered: "):
        locate_teacher("models:/no-such-model@candidate")
    # a hub id: the real from_pretrained path, which offline (HF_HUB_OFFLINE=1) only reads the cache
    with pytest.raises(ModelSourceError, match=r"'nobody-here/no-model'.*hub gave no model"):
        locate_teacher("nobody-here/no-model")


# --- the training function -------------------------------------------------------------------------


def test_distill_student_trains_logs_and_saves_a_plain_transformers_model(micro, tmp_path):
    from transformers import AutoModelForCausalLM

    sources, teacher = micro
    logs, evals = [], []
    result = distill_student(
        micro_config(), teacher, sources, tmp_path / "out", log=lambda m, s: logs.append((s, m)),
        on_eval=lambda step, loss: evals.append((step, loss)),
    )
    assert [s for s, _ in evals] == [3, 6] and evals[-1][1] == result["val_loss"]
    assert {"loss", "kl", "ce", "lr", "grad_norm", "tokens_per_s"} <= set(logs[0][1])
    assert all(math.isfinite(m["kl"]) and m["kl"] > 0 for _, m in logs if "kl" in m)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model")
    assert model.config.hidden_size == 32 and load_tokenizer(str(tmp_path / "out" / "model")).eos_token_id == 1


def test_an_exception_from_on_eval_propagates_and_nothing_is_written(micro, tmp_path):
    sources, teacher = micro

    class Pruned(Exception):
        pass

    def prune(step, loss):
        raise Pruned(step)

    with pytest.raises(Pruned):
        distill_student(micro_config(), teacher, sources, tmp_path / "out", on_eval=prune)
    assert not (tmp_path / "out").exists()


def test_a_top_k_store_replaces_the_teacher(micro, tmp_path, monkeypatch):
    """With k = the whole vocabulary the stored run reproduces the live-teacher run; with a store
    the teacher is never loaded."""
    sources, teacher = micro
    config = micro_config(top_k=len(load_tokenizer(sources.tokenizer)), temperature=1.0)
    store = tmp_path / "topk"
    store.mkdir()
    model = teacher_mod.load_teacher(teacher, torch.device("cpu"))
    meta = write_topk(model, plan_for(config, sources), config.seed, config.top_k, store, torch.device("cpu"))
    assert meta["mean_topk_mass"] == pytest.approx(1.0, abs=1e-2)
    # the store's rows are the batches the student reads at that step, in order
    batch = step_batches(plan_for(config, sources), 3, config.seed)[0]
    lp, ids = next(TopKStore(store).micro_batches(3, config.batch_size, torch.device("cpu")))
    live_top = torch.log_softmax(teacher_mod.teacher_logits(model, batch.input_ids, batch.doc_ids), -1).topk(8, -1)
    assert torch.equal(ids[..., :8], live_top.indices)
    assert torch.allclose(lp[..., :8], live_top.values, atol=1e-2)
    live = distill_student(config, teacher, sources, tmp_path / "live")

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was loaded although a top-k store was given")

    monkeypatch.setattr("smolforge.tasks.distill.train.load_teacher", no_teacher)
    stored = distill_student(config, None, sources, tmp_path / "stored", topk=store)
    assert stored["val_loss"] == pytest.approx(live["val_loss"], abs=2e-3)
    assert stored["train_kl"] == pytest.approx(live["train_kl"], abs=1e-3)

    other = micro_config(top_k=config.top_k, data={"name": "distill", "steps": 5, "seq_len": 32, "mixture": {"a": 1}})
    with pytest.raises(ValueError, match="was made for"):
        distill_student(other, None, sources, tmp_path / "wrong", topk=store)


def test_the_pipeline_config_refuses_unknown_sources_and_a_missing_teacher():
    with pytest.raises(ConfigError, match=r"distill\.data\.mixture names \['nowhere'\]"):
        load_config("tiny", overrides=["distill.data.mixture={nowhere: 1}"])
    with pytest.raises(ConfigError, match="distill.teacher is null"):
        load_config("tiny", overrides=["pretrain=null"])
    assert load_config("tiny", overrides=["pretrain=null", "distill.teacher=models:/smolforge-base@candidate"]).pretrain is None
