"""The dataset card (`dataset/README.md`): what is in the dataset, how it was made, how to open it.

The YAML front matter is the Hugging Face hub's (`configs` with `data_files`, `language`), so a
pushed copy shows its files as one `train` split; the body is the numbers a reader wants before
opening the files: rows per source and language, counts per curation step, drop reasons, the
settings of every step, and the lines that load it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FRONT = "---\n"


def _table(columns: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(f"{v:,}" if isinstance(v, int) else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def front_matter(profile: dict[str, Any], pattern: str, title: str) -> str:
    languages = [lang for lang in profile["languages"] if lang != "unknown"]
    return (
        f"{FRONT}pretty_name: {json.dumps(title)}\nlanguage: {json.dumps(languages)}\n"
        f"configs:\n- config_name: default\n  data_files:\n  - split: train\n    path: {json.dumps(pattern)}\n{FRONT}"
    )


def body(profile: dict[str, Any], title: str, report: dict[str, Any] | None, settings: dict[str, Any] | None) -> str:
    """The card's text below the front matter; `report` (the corpus's `corpus.json`) adds the
    funnel and drop reasons, `settings` the configuration of each step."""
    parts = [
        f"# {title}\n",
        f"{profile['rows']:,} documents, {profile['chars']:,} characters, {profile['tokens']:,} tokens "
        f"in {profile['files']} Parquet file(s) ({profile['bytes']:,} bytes), sorted by source then id.\n",
        "## Sources\n",
        _table(["source", "documents", "characters", "tokens"], [[s, v["rows"], v["chars"], v["tokens"]] for s, v in profile["sources"].items()]),
        "\n## Languages\n",
        _table(["language", "documents"], [[lang, n] for lang, n in profile["languages"].items()]),
    ]
    if profile.get("parts"):
        parts += [
            "\n## Corpora it joins (oldest first)\n",
            "Documents of files changed or deleted since a corpus was curated are left out of it.\n",
            _table(["corpus", "file", "documents", "left out"], [[p["corpus"], p["file"], p["rows"], p["left_out"]] for p in profile["parts"]]),
        ]
    if report is not None:
        parts += [
            "\n## Counts per step\n",
            _table(
                ["step", "documents in", "documents out", "dropped", "characters out", "tokens"],
                [[r["step"], r["docs_in"], r["docs_out"], r["dropped"], r["chars_out"], r["tokens_out"] or ""] for r in report["funnel"]],
            ),
            "\n## Drop reasons\n",
            "Every dropped document is listed with its reason in the corpus's `dropped.parquet`.\n",
            _table(
                ["step", "reason", "documents"],
                [[step, reason, n] for step, m in report["steps"].items() for reason, n in sorted(m.get("drops", {}).items(), key=lambda kv: -kv[1])],
            ),
        ]
    if settings:
        parts += ["\n## How it was made\n", "The settings of each curation step:\n", f"```json\n{json.dumps(settings, indent=2, sort_keys=True)}\n```"]
    parts += [
        "\n## Columns\n",
        "`id` (`<source>/<file>[#<n>]`), `text`, `source`, `path` (the file it came from), `language` and "
        "`language_score` (fastText lid.176), `chars`, `tokens` (without the end-of-document token), `split` "
        "(the packed split: train or val), `minhash_cluster` (the document's own id when duplicates of it were "
        "removed; each names it in `dropped.parquet`), `minhash_cluster_size` (documents in its cluster, itself included), "
        "and the quality step's measures of the kept text: `quality_words` (words that are not only punctuation), "
        "`quality_mean_word_length`, `quality_stop_words` (distinct stop words), `quality_line_punct_ratio`, "
        "`quality_short_line_ratio`, `quality_dup_line_char_ratio` and `quality_newlines_per_word` (FineWeb's line rules).\n",
        "## Loading\n",
        "```python\nimport datasets\nds = datasets.load_dataset(\"parquet\", data_files=\"data/*.parquet\", split=\"train\")\n\n"
        "import pandas as pd\ndf = pd.read_parquet(\"data\")\n\n"
        "from datatrove.pipeline.readers import ParquetReader\ndocs = ParquetReader(\"data\")()\n```\n",
    ]
    return "\n".join(parts)


def write_card(folder: Path, profile: dict[str, Any], title: str, report: dict[str, Any] | None = None, settings: dict[str, Any] | None = None) -> None:
    text = front_matter(profile, "data/*.parquet", title) + "\n" + body(profile, title, report, settings)
    (Path(folder) / "README.md").write_text(text, encoding="utf-8")


def card_body(folder: Path) -> str:
    """A card's text without its front matter (an export puts its own above it)."""
    text = (Path(folder) / "README.md").read_text(encoding="utf-8")
    if text.startswith(FRONT):
        end = text.find(FRONT, len(FRONT))
        return text[end + len(FRONT) :].lstrip("\n") if end != -1 else text
    return text
