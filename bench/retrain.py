"""What a weekly retrain costs against the pipeline's first run, both as a user runs them.

    python bench/retrain.py [--repeats 1] [--new-articles 4] [--data-dir DIR] [--set KEY=VALUE ...] [--quick]

Each repeat, in a project folder that does not exist yet, over a copy of the sample corpus:
`smolforge run pipeline --preset tiny` (the first run: curation of everything, pretraining,
distillation, fine-tuning, merging, evaluation, promotion), then new web pages are added to the
copy (`--new-articles`, taken from the sample corpus's unused Britannica paragraphs), one page is
edited and one deleted, and `smolforge run retrain --preset tiny` runs: curation of the new and
changed files only, continued pretraining from the champion with replay, fine-tuning, evaluation
(the champions evaluated again on the new held-out data) and the gate. Wall time of each whole
command, their ratio per repeat and its median; the target is a retrain ≤ 25 % of the first run.
The retrain's own settings are the `retrain` section's defaults (replay share 0.25, new tokens read
twice, 10-200 steps) unless `--set` changes them.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from commands import timed, user_env  # bench/, beside this script
from quickmode import parse_args

SMOLFORGE = Path(sys.executable).parent / "smolforge"  # the console script of this environment
TARGET = 0.25
# The quick mode: the web and chat sources, one short stage, no distillation or merge, evaluation
# without lm-evaluation-harness.
QUICK_SETTINGS = [
    "curate.sources=[{name: chat, kind: jsonl, path: 'jsonl/*.jsonl'}, {name: web, kind: html, path: 'html/**/*.html'}]",
    "pretrain.stages=[{name: stable, steps: 20, seq_len: 64, mixture: {chat: 0.5, web: 0.5}}]",
    "pretrain.schedule.warmup_steps=2",
    "pretrain.schedule.decay_fraction=0.3",
    "distill=null",
    "merge=null",
    "finetune.steps=10",
    "evaluate.tasks=[perplexity, chat]",
]


def change_data(data: Path, articles: int) -> None:
    """New pages, one edited, one deleted, in the web source's folder (`html/`)."""
    from smolforge.tasks.curate.sample_corpus import later_articles

    for name, page in later_articles(articles):
        (data / "html" / name).write_text(page, encoding="utf-8")
    edited = data / "html" / "boilerplate_blog.html"
    edited.write_text(edited.read_text(encoding="utf-8").replace("<p>", "<p>A paragraph added this week.</p>\n<p>", 1), encoding="utf-8")
    (data / "html" / "boilerplate_news.html").unlink()


def _line(stdout: str, label: str) -> str:
    """The command's own line starting with `label` (`took ... s in all (per stage)`)."""
    found = re.findall(rf"^{label}\s+(.*)$", stdout, flags=re.MULTILINE)
    return found[-1] if found else "?"


def _retrain_facts(home: Path) -> dict[str, object]:
    """Steps and replay of the continued stage, and the tokens new and replayed, from the store."""
    store = home / "artifacts"
    data = max((store / "retrain-data").iterdir(), key=lambda p: p.stat().st_mtime)
    metrics = json.loads((data / "manifest.json").read_text())["metrics"]
    stage = max((store / "pretrained").iterdir(), key=lambda p: p.stat().st_mtime)
    stage_metrics = json.loads((stage / "manifest.json").read_text())["metrics"]
    return {"steps": stage_metrics["steps"], "new_tokens": metrics["new_tokens"], "replay_tokens": metrics["replay_tokens"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1, help="pipeline + retrain pairs, each in a fresh folder")
    parser.add_argument("--new-articles", type=int, default=4, help="new web pages the retrain finds")
    parser.add_argument("--data-dir", type=Path, default=None, help="an existing sample corpus to copy (not timed)")
    parser.add_argument("--set", dest="settings", action="append", default=[], help="a setting for both commands")
    args = parse_args(parser, repeats=1, new_articles=2, data_dir=None, settings=QUICK_SETTINGS)

    from rich.console import Console
    from rich.table import Table

    from smolforge.tasks.curate.sample_corpus import build_sample_corpus

    console = Console(width=200)
    rows = []
    for repeat in range(args.repeats):
        scratch = Path(tempfile.mkdtemp(prefix="smolforge-bench-retrain-"))
        try:
            data = scratch / "data"
            if args.data_dir is not None:
                shutil.copytree(args.data_dir, data)
            else:
                build_sample_corpus(data, scale=1)
            home = scratch / "new-project"
            settings = [*args.settings, "curate.sample_corpus=null", f"curate.data_dir={data}"]
            flags = [a for s in settings for a in ("--set", s)]
            console.print(f"repeat {repeat + 1}/{args.repeats}: first run in {home} ...")
            first, first_out = timed([str(SMOLFORGE), "run", "pipeline", "--preset", "tiny", *flags], {**user_env(home), "COLUMNS": "200"})
            change_data(data, args.new_articles)
            console.print("retrain ...")
            second, second_out = timed([str(SMOLFORGE), "run", "retrain", "--preset", "tiny", *flags], {**user_env(home), "COLUMNS": "200"})
            if "retrained" not in second_out:
                sys.exit(f"the retrain trained nothing:\n{second_out[-3000:]}")
            facts = _retrain_facts(home)
            rows.append({"first": first, "retrain": second, "found": _line(second_out, "retrain"), **facts,
                         "took_first": _line(first_out, "took"), "took_retrain": _line(second_out, "took")})
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    table = Table(title="Retrain against the first pipeline run (wall s of each whole command)", title_justify="left")
    for column in ("repeat", "pipeline s", "retrain s", "retrain/pipeline", "new tokens", "of all tokens", "steps"):
        table.add_column(column, justify="right")
    for i, r in enumerate(rows, 1):
        table.add_row(
            str(i), f"{r['first']:.1f}", f"{r['retrain']:.1f}", f"{r['retrain'] / r['first']:.1%}",
            f"{r['new_tokens']:,}", f"{r['new_tokens'] / (r['new_tokens'] + r['replay_tokens']):.1%}", str(r["steps"]),
        )
    console.print(table)
    for i, r in enumerate(rows, 1):
        console.print(f"repeat {i} pipeline: {r['took_first']}")
        console.print(f"repeat {i} retrain:  {r['took_retrain']}; {r['found']}")
    ratio = statistics.median(r["retrain"] / r["first"] for r in rows)
    verdict = "meets" if ratio <= TARGET else "misses"
    console.print(f"retrain/pipeline: median {ratio:.1%} over {len(rows)} repeat(s) ({verdict} the {TARGET:.0%} target)")


if __name__ == "__main__":
    main()
