"""Presets, overrides and the errors a user sees for a bad value."""

import pytest

from smolforge.errors import ConfigError
from smolforge.flows.config import available_presets, load_config
from smolforge.settings import apply_override


def test_tiny_preset_loads_with_fineweb_defaults():
    cfg = load_config("tiny")
    assert "tiny" in available_presets()
    assert cfg.curate.language.threshold == 0.65
    assert cfg.curate.language.keep == ["en", "fr", "es", "de", "it", "pt"]
    assert (cfg.curate.dedup.ngram, cfg.curate.dedup.buckets, cfg.curate.dedup.hashes_per_bucket) == (5, 14, 8)


def test_override_sets_nested_value_and_list_items():
    cfg = load_config("tiny", overrides=["curate.dedup.ngram=3", "curate.sources.0.language=fr", "curate.language.keep=[en, fr]"])
    assert cfg.curate.dedup.ngram == 3
    assert cfg.curate.sources[0].language == "fr"
    assert cfg.curate.language.keep == ["en", "fr"]


def test_null_turns_a_rule_set_off():
    assert load_config("tiny", overrides=["curate.quality.c4=null"]).curate.quality.c4 is None


@pytest.mark.parametrize(
    "override, words",
    [
        ("curate.language.threshold=1.5", ["curate.language.threshold", "1.5", "less than or equal to 1"]),
        ("curate.dedup.ngrams=3", ["curate.dedup.ngrams", "unknown setting"]),
        ("curate.sources.0.kind=docx", ["curate.sources.0.kind", "docx", "'html', 'pdf'"]),
        ("curate.language.threshold=high", ["curate.language.threshold", "high", "valid number"]),
        ("curate.sources.9.kind=html", ["curate.sources", "list of 5 items"]),
        ("curate.dedup.ngram", ["section.field=value"]),
    ],
)
def test_bad_values_fail_naming_field_value_and_expectation(override, words):
    with pytest.raises(ConfigError) as err:
        load_config("tiny", overrides=[override])
    for word in words:
        assert word in str(err.value)


def test_duplicate_source_names_and_unknown_preset_are_refused():
    with pytest.raises(ConfigError, match="unique"):
        load_config("tiny", overrides=["curate.sources.1.name=web"])
    with pytest.raises(ConfigError, match="unknown preset 'huge'.*tiny"):
        load_config("huge")


def test_config_file_merges_over_preset(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("curate:\n  tokenizer:\n    vocab_size: 1000\n")
    cfg = load_config("tiny", f)
    assert cfg.curate.tokenizer.vocab_size == 1000 and len(cfg.curate.sources) == 5
    f.write_text("- not a mapping\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config("tiny", f)


def test_apply_override_parses_yaml_values():
    data = {"a": {"b": 1}}
    apply_override(data, "a.c=[1, 2]")
    apply_override(data, "a.b=null")
    assert data == {"a": {"b": None, "c": [1, 2]}}



@pytest.mark.parametrize(
    "override, where, closest, valid",
    [
        ("curate.languag.threshold=0.5", "curate.languag", "language", "data_dir, dataset, dedup, extract, language, pack"),
        ("pretrain.model.hidden=64", "pretrain.model.hidden", "hidden_size", "hidden_size, intermediate_size"),
        ("curate.sources.0.pth=x", "curate.sources.0.pth", "path", "kind, language, name, path"),
    ],
)
def test_an_unknown_setting_names_the_closest_valid_key_and_the_keys_at_its_level(override, where, closest, valid):
    with pytest.raises(ConfigError) as err:
        load_config("tiny", overrides=[override])
    assert f"{where}: unknown setting" in str(err.value)
    assert f"(did you mean {closest!r}?); its settings: {valid}" in str(err.value)

