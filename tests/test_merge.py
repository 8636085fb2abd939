"""The merge stage's pieces on tiny SmolLM3 models, without a pipeline: mergekit's methods give
what they promise (exact average, identity, the ends of a SLERP, TIES and DARE unlike a soup),
the greedy soup leaves out an ingredient that hurts, and every refusal names both sides."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from smolforge.artifacts import ArtifactStore, find_artifact
from smolforge.models.architecture import build_model
from smolforge.models.config import ModelShape
from smolforge.tasks.curate.tokenizer import load_tokenizer, train_tokenizer
from smolforge.tasks.finetune.config import FinetuneConfig
from smolforge.tasks.finetune.data import collate, load_data
from smolforge.tasks.finetune.train import finetune_model, masked_loss
from smolforge.tasks.merge.check import Ingredient, MergeError, check_merge, check_related
from smolforge.tasks.merge.config import METHODS, SPARSIFYING, MergeConfig, MergeMethod
from smolforge.tasks.merge.ingredients import require
from smolforge.tasks.merge.mergekit_run import merge_models
from smolforge.tasks.merge.score import score_model, write_heldout
from smolforge.tasks.merge.soup import greedy_soup

SHAPE = ModelShape(
    hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64, rope_theta=10_000.0,
    nope_every=0, max_seq_len=96,
)
THINGS = "mill river bridge boat barn gate tower well cart road".split()
COLOURS = "red blue green white black grey brown gold".split()


def qa_records() -> list[dict]:
    """80 questions with a learnable pattern: each thing has one colour."""
    rng = random.Random(0)
    colour = {t: rng.choice(COLOURS) for t in THINGS}
    records = []
    for i in range(80):
        thing = THINGS[i % len(THINGS)]
        asked = ["What colour is the {}?", "Which colour has the {}?", "Tell me the colour of the {}."][i % 3]
        records.append({"instruction": asked.format(thing), "input": "", "output": f"The {thing} is {colour[thing]}."})
    return records


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("merge")


@pytest.fixture(scope="module")
def tokenizer_dir(workdir) -> Path:
    texts = [f"{r['instruction']} {r['output']}" for r in qa_records()] * 3 + ["user assistant system im_start im_end"]
    train_tokenizer(texts, vocab_size=300, out_dir=workdir / "tok")
    return workdir / "tok"


def save_model(folder: Path, tokenizer_dir: Path, seed: int, shape: ModelShape = SHAPE) -> Path:
    tok = load_tokenizer(str(tokenizer_dir))
    model = build_model(shape, vocab_size=len(tok), bos_id=tok.bos_token_id, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, seed=seed)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(workdir, tokenizer_dir) -> list[Path]:
    """Three random models of one shape and tokenizer (a stands in for the base of b and c)."""
    return [save_model(workdir / name, tokenizer_dir, seed) for seed, name in enumerate("abc")]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def max_difference(x: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> float:
    assert sorted(x) == sorted(y)
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def test_a_half_and_half_linear_merge_is_the_exact_average(models, tmp_path):
    a, b, _ = models
    merge_models(MergeMethod(method="linear", weights=[0.5, 0.5]), [a, b], None, tmp_path / "out")
    wa, wb, out = weights(a), weights(b), weights(tmp_path / "out")
    assert max_difference(out, {k: (wa[k] + wb[k]) / 2 for k in wa}) == 0.0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"] == ["SmolLM3ForCausalLM"]
    assert (tmp_path / "out" / "tokenizer.json").is_file() and (tmp_path / "out" / "mergekit.json").is_file()


def test_merging_a_model_with_itself_returns_it(models, tmp_path):
    a = models[0]
    twin = shutil.copytree(a, tmp_path / "twin")
    merge_models(MergeMethod(method="linear"), [a, twin], None, tmp_path / "soup")
    merge_models(MergeMethod(method="slerp", t=0.5), [a, twin], None, tmp_path / "slerp")
    assert max_difference(weights(tmp_path / "soup"), weights(a)) < 1e-6
    assert max_difference(weights(tmp_path / "slerp"), weights(a)) < 1e-6


def test_a_slerp_at_zero_and_one_returns_its_ends(models, tmp_path):
    a, b, _ = models
    for t, end in ((0.0, a), (1.0, b)):
        merge_models(MergeMethod(method="slerp", t=t), [a, b], None, tmp_path / f"t{t}")
        assert max_difference(weights(tmp_path / f"t{t}"), weights(end)) < 1e-6
    merge_models(MergeMethod(method="slerp", t=0.5), [a, b], None, tmp_path / "half")
    assert max_difference(weights(tmp_path / "half"), weights(a)) > 1e-3


def test_ties_and_dare_differ_from_a_soup_of_the_same_models(models, tmp_path):
    base, b, c = models
    merge_models(MergeMethod(method="linear"), [b, c], None, tmp_path / "linear")
    soup = weights(tmp_path / "linear")
    for method in ("ties", "dare_ties", "dare_linear"):
        merge_models(MergeMethod(method=method, density=0.5), [b, c], base, tmp_path / method)
        merged = weights(tmp_path / method)
        assert max_difference(merged, soup) > 1e-3, method
        assert all(torch.isfinite(t).all() for t in merged.values())
    # task arithmetic with unit weights on b and c: base + (b - base) + (c - base)
    merge_models(MergeMethod(method="task_arithmetic"), [b, c], base, tmp_path / "ta")
    wa, wb, wc = weights(base), weights(b), weights(c)
    assert max_difference(weights(tmp_path / "ta"), {k: wb[k] + wc[k] - wa[k] for k in wa}) < 1e-5


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_in_the_table_runs_on_smollm3(models, tmp_path, method):
    base, b, c = models
    settings = {"t": 0.5} if method == "slerp" else {"density": 0.6} if method in SPARSIFYING else {}
    merge_models(MergeMethod(method=method, **settings), [b, c], base if METHODS[method].needs_base else None, tmp_path / "out")
    merged = weights(tmp_path / "out")
    assert sorted(merged) == sorted(weights(b)) and all(torch.isfinite(t).all() for t in merged.values())


# -- the greedy soup, on real fine-tunes of one base and one wrecked by a wild learning rate --------


def wreck(base: Path, data, out: Path) -> Path:
    """Full fine-tuning at a learning rate of 1 for a few steps: the planted bad ingredient."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.0)
    tok = load_tokenizer(str(base))
    for step in range(4):
        loss, n = masked_loss(model, collate(data.train[step * 8 : step * 8 + 8], tok.pad_token_id))
        (loss / n).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def soup_case(workdir, tokenizer_dir):
    """A base trained briefly on the records, three full fine-tunes of it (seeds 0-2, one split),
    a wrecked one, and the held-out selection and test records none of them saw."""
    data_file = workdir / "qa.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in qa_records()))
    base = save_model(workdir / "base", tokenizer_dir, seed=7)
    split = dict(max_seq_len=96, val_fraction=0.2, max_val=8, seed=0, holdout=24)
    records = workdir / "heldout"
    records.mkdir()
    write_heldout([data_file], load_tokenizer(str(base)), split, records)
    tunes = {}
    for seed in (0, 1, 2):
        cfg = FinetuneConfig(method="full", lr=3e-3, steps=24, batch_size=8, warmup_steps=2, eval_every=8, patience=None,
                             max_seq_len=96, max_val_records=8, val_fraction=0.2, heldout_records=24, seed=seed,
                             sample_prompts=0, threads=1)
        finetune_model(cfg, base, [data_file], workdir / f"tune{seed}")
        tunes[f"seed{seed}"] = workdir / f"tune{seed}" / "model"
    data = load_data([data_file], load_tokenizer(str(base)), **split)
    tunes["wild"] = wreck(tunes["seed0"], data, workdir / "wild")
    return base, tunes, records


def test_the_held_out_records_are_the_same_whatever_the_seed_and_never_trained_on(workdir, soup_case, tokenizer_dir):
    tok = load_tokenizer(str(tokenizer_dir))
    one = FinetuneConfig(heldout_records=24, seed=0, max_seq_len=96)
    other = FinetuneConfig(heldout_records=24, seed=5, max_seq_len=96)
    first = load_data([workdir / "qa.jsonl"], tok, **one.split_settings())
    second = load_data([workdir / "qa.jsonl"], tok, **other.split_settings())
    assert [e.origin for e in first.heldout] == [e.origin for e in second.heldout] and len(first.heldout) == 24
    held = {e.origin for e in first.heldout}
    assert not held & {e.origin for e in first.train + first.val}
    _, _, records = soup_case
    lines = [json.loads(x) for x in (records / "selection.jsonl").read_text().splitlines()]
    lines += [json.loads(x) for x in (records / "test.jsonl").read_text().splitlines()]
    assert len(lines) == 24 and {x["origin"] for x in lines} == held


def test_the_greedy_soup_leaves_out_an_ingredient_that_hurts(soup_case, tmp_path):
    base, tunes, records = soup_case
    scores = {label: score_model(folder, records) for label, folder in tunes.items()}
    base_loss = score_model(base, records)["selection_loss"]
    assert all(scores[f"seed{s}"]["selection_loss"] < base_loss for s in range(3))  # the fine-tunes learned
    assert scores["wild"]["selection_loss"] > max(scores[f"seed{s}"]["selection_loss"] for s in range(3))
    made: list[list[str]] = []

    def make_soup(labels: list[str]) -> Path:
        made.append(labels)
        if len(labels) == 1:
            return tunes[labels[0]]
        out = tmp_path / "+".join(labels)
        merge_models(MergeMethod(method="linear"), [tunes[x] for x in labels], None, out)
        return out

    soup = greedy_soup(
        [(label, s["selection_loss"]) for label, s in scores.items()], make_soup,
        lambda folder: score_model(folder, records)["selection_loss"],
    )
    assert "wild" not in soup.ingredients
    assert soup.steps[-1] == {"ingredient": "wild", "selection_loss": pytest.approx(soup.steps[-1]["selection_loss"]), "kept": False}
    assert soup.selection_loss <= min(s["selection_loss"] for s in scores.values())
    assert [s["ingredient"] for s in soup.steps] == sorted(scores, key=lambda x: scores[x]["selection_loss"])
    assert made[0] == [soup.steps[0]["ingredient"]]  # starts from the best ingredient alone


# -- refusals, before any work ----------------------------------------------------------------------


def ingredients(*folders: Path, base_key: str = "b" * 32) -> list[Ingredient]:
    return [Ingredient(f.name, f, base_key) for f in folders]


def test_models_of_another_shape_vocabulary_or_tokenizer_are_refused_naming_both(models, workdir, tokenizer_dir, tmp_path):
    a, b, _ = models
    wide = save_model(tmp_path / "wide", tokenizer_dir, 0, SHAPE.model_copy(update={"hidden_size": 64}))
    with pytest.raises(MergeError, match="cannot merge a with wide: they differ in hidden_size 32 vs 64"):
        check_merge([MergeMethod()], ingredients(a, wide), None, False)
    other_tok = tmp_path / "tok2"
    train_tokenizer(["a completely different corpus of words"] * 40 + [f"w{i} x{i}" for i in range(300)], vocab_size=400, out_dir=other_tok)
    bigger = save_model(tmp_path / "bigger", other_tok, 0)
    with pytest.raises(MergeError, match=r"cannot merge a with bigger: they differ in vocabulary size \d+ vs \d+"):
        check_merge([MergeMethod()], ingredients(a, bigger), None, False)
    retok = shutil.copytree(b, tmp_path / "retok")
    tokenizer = json.loads((retok / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[100:102]
    vocab[first], vocab[second] = vocab[second], vocab[first]  # same size, two tokens swapped
    (retok / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(MergeError, match=r"cannot merge a with retok: they differ in tokenizer \(tokenizer.json"):
        check_merge([MergeMethod()], ingredients(a, retok), None, False)
    config = json.loads((b / "config.json").read_text())
    llama = shutil.copytree(b, tmp_path / "llama")
    (llama / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(MergeError, match="differ in architecture SmolLM3ForCausalLM vs LlamaForCausalLM"):
        check_merge([MergeMethod()], ingredients(a, llama), None, False)


def test_methods_the_ingredients_cannot_satisfy_are_refused(models):
    a, b, c = models
    with pytest.raises(MergeError, match=r"slerp interpolates two models, got 3: \['a', 'b', 'c'\]"):
        check_merge([MergeMethod(method="slerp", t=0.5)], ingredients(a, b, c), None, False)
    with pytest.raises(MergeError, match=r"ties adds task vectors to a base, and there is none"):
        check_merge([MergeMethod(method="ties", density=0.5)], ingredients(b, c), None, False)
    with pytest.raises(MergeError, match=r"3 weights \[1.0, 1.0, 2.0\] for 2 ingredients \['b', 'c'\]"):
        check_merge([MergeMethod(weights=[1, 1, 2])], ingredients(b, c), None, False)
    check_merge([MergeMethod(method="ties", density=0.5), MergeMethod(method="linear", weights=[1, 3], name="w")], ingredients(b, c), a, False)


@pytest.mark.parametrize(
    "method, message",
    [
        ({"method": "ties", "density": 0.0}, r"density=0.0 is outside \(0, 1\]"),
        ({"method": "dare_linear", "density": 1.5}, r"density=1.5 is outside \(0, 1\]"),
        ({"method": "slerp"}, "slerp needs t"),
        ({"method": "linear", "t": 0.3}, r"linear takes no t \(its parameters: weights\)"),
        ({"method": "slerp", "t": 0.5, "density": 0.5}, r"slerp takes no density"),
        ({"method": "linear", "weights": [0, 0]}, "must be >= 0 and not all zero"),
        ({"method": "frankenmerge"}, "Input should be 'linear', 'slerp'"),
    ],
)
def test_bad_method_settings_are_refused_at_validation(method, message):
    with pytest.raises(ValueError, match=message):
        MergeConfig(methods=[method])


def test_ingredients_of_different_bases_are_refused_unless_allowed(models):
    a, b, _ = models
    mixed = [Ingredient("tune-1", a, "1" * 32), Ingredient("tune-2", b, "2" * 32)]
    with pytest.raises(MergeError, match=r"tune-1 \(base 111111111111\) and tune-2 \(base 222222222222\) do not share a base"):
        check_related(mixed, allow_unrelated=False)
    assert check_related(mixed, allow_unrelated=True) is None
    unknown = [Ingredient("tune-1", a, "1" * 32), Ingredient("folder", b, None)]
    with pytest.raises(MergeError, match=r"folder \(no base in its lineage\)"):
        check_related(unknown, allow_unrelated=False)
    assert check_related([Ingredient("x", a, "1" * 32), Ingredient("y", b, "1" * 32)], False) == "1" * 32


def test_an_ingredient_that_names_nothing_is_refused(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    for spec in ("finetuned:0123456789abcdef0123", "0123456789abcdef0123"):
        with pytest.raises(MergeError, match=rf"merge.ingredients.1={spec!r}: no such model"):
            require(find_artifact(store, spec), spec, "merge.ingredients.1", store)

