"""The evaluation stage's pieces without a pipeline: answer metrics, perplexity windows, task YAML
checks and the comparison's tokenizer note (the benchmark's quick mode runs in tests/test_bench.py)."""

from __future__ import annotations

import pytest

from smolforge.tasks.evaluate.chat import answer_scores
from smolforge.tasks.evaluate.config import EVALUATION_TASKS
from smolforge.tasks.evaluate.harness import check_task_yamls
from smolforge.tasks.evaluate.perplexity import IGNORE_INDEX, document_windows, make_batches
from smolforge.tasks.evaluate.registry import TASKS, EvaluationError
from smolforge.tasks.evaluate.report import comparison_rows


def test_a_reference_against_itself_scores_perfectly_and_a_wrong_answer_does_not():
    references = ["The json module encodes Python objects as JSON text.", "Bonjour, comment allez-vous ?"]
    perfect = answer_scores(references, references)
    assert perfect == {"bleu": pytest.approx(100.0), "chrf": pytest.approx(100.0), "rouge_l": 1.0, "exact_match": 1.0}
    wrong = answer_scores(["It returns a list of files.", "Good morning."], references)
    assert wrong["bleu"] < 50 and wrong["chrf"] < 50 and wrong["rouge_l"] < 0.5 and wrong["exact_match"] == 0.0


def test_every_token_after_a_documents_first_is_a_target_once():
    docs = [list(range(1, 601)), [7, 8], [5], list(range(10, 268))]  # 600 tokens: three windows of 256
    windows = document_windows(docs, seq_len=256)
    targets = [t for _, labels in windows for t in labels]
    assert len(targets) == 599 + 1 + 0 + 257
    assert sorted(targets[:599]) == list(range(2, 601))  # first document's windows come first, in order
    assert all(len(inputs) == len(labels) <= 256 for inputs, labels in windows)
    batches = make_batches(windows, batch_size=2, pad_id=0)
    assert sum(int((b["targets"] != IGNORE_INDEX).sum()) for b in batches) == len(targets)
    assert all(int(b["attention_mask"].sum()) == int((b["targets"] != IGNORE_INDEX).sum()) for b in batches)


def test_the_registry_holds_every_task_the_config_accepts_with_names_and_references():
    assert set(TASKS) == set(EVALUATION_TASKS) == {"perplexity", "chat", "lm_eval"}
    for task in TASKS.values():
        assert task.pretty_name and task.reference_url.startswith("https://")


def test_a_task_yaml_that_does_not_parse_is_named_with_its_line(tmp_path):
    (tmp_path / "good.yaml").write_text("task: mine\ndataset_path: json\nprocess_results: !function utils.score\n")
    assert check_task_yamls([str(tmp_path)]) == ["mine"]
    bad = tmp_path / "sub" / "broken.yaml"
    bad.parent.mkdir()
    bad.write_text("task: broken\ndoc_to_text: [unclosed\nmetric_list:\n  - metric: acc\n")
    with pytest.raises(EvaluationError, match=rf"{bad}:\d+: the lm-eval task YAML does not parse"):
        check_task_yamls([str(tmp_path)])
    with pytest.raises(EvaluationError, match="is not a folder"):
        check_task_yamls([str(tmp_path / "nowhere")])


def test_the_comparison_says_when_perplexities_do_not_compare():
    same = [{"label": "a", "tokenizer_hash": "x", "metrics": {"perplexity": 9.0}}, {"label": "b", "tokenizer_hash": "x", "metrics": {}}]
    rows, note = comparison_rows(same)
    assert [r["tokenizer"] for r in rows] == ["A", "A"] and "share tokenizer A" in note
    rows, note = comparison_rows([*same, {"label": "c", "tokenizer_hash": "y", "metrics": {"bits_per_byte": 1.5}}])
    assert rows[-1] == {"model": "c", "tokenizer": "B", "bits_per_byte": 1.5}
    assert "only between rows with the same tokenizer letter" in note

