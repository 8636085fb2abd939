"""Every benchmark's `--quick` mode runs to its tables (bench/quickmode.py), so a bench that no
longer runs fails here instead of on the day someone wants its figures. The figures themselves are
not checked: speed and memory targets live in the benches, never in tests."""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parent.parent / "bench"


TABLES = {
    "curation.py": ["Throughput:", "Re-run with nothing changed"],
    "pretrain.py": ["tokens/s smolforge/mlflow", "tokens/s trainer", "optimizer.step() Muon"],
    "finetune.py": ["variant", "qlora peak / lora peak"],
    "peft_methods.py": ["held-out before", "ranking by held-out loss", "ranking by peak memory"],
    "sweep.py": ["sweep overhead per trial"],
    "evaluate.py": ["ratio to bare", "smolforge", "bare"],
    "merge.py": ["ratio to direct", "paired ratio stage/direct", "soup claim on held-out test records", "greedy soup"],
    "generate.py": ["first output on stdout", "process exit", "time to first token from the registry"],
    "cli.py": ["Start-up", "Re-run with nothing changed", "second/first: median"],
    "retrain.py": ["Retrain against the first pipeline run", "retrain/pipeline: median"],
    "stack.py": ["`smolforge up`", "sqlite", "submit/run: median"],
    "dataset.py": ["Dataset write as a share of curation", "dataset share of curation: median", "pandas jsonl / datasets parquet"],
}
TEST = "test_quick_mode_completes_and_prints_its_tables"
AT_ONCE = 2  # most of a quick run is process start-up, imports and Prefect's temporary server, which overlap


@pytest.fixture(scope="module")
def quick_runs(request, tmp_path_factory, outside_env, sample_corpus):
    """The quick mode of every bench this session selected, started together, `AT_ONCE` at a time;
    each test reads its own run."""
    selected = [item.callspec.params["script"] for item in request.session.items if item.originalname == TEST]

    def run(script: str) -> subprocess.CompletedProcess:
        folder = tmp_path_factory.mktemp(script.removesuffix(".py"))
        # the benches that curate read the session's sample corpus instead of building their own
        extra = {
            "cli.py": ["--data-dir"], "retrain.py": ["--data-dir"], "stack.py": ["--data-dir"], "curation.py": ["--corpus"],
            "dataset.py": ["--corpus"],
        }.get(script, [])
        extra = [*extra, str(sample_corpus)] if extra else []
        return subprocess.run(
            [sys.executable, str(BENCH / script), "--quick", *extra], cwd=folder, env={**outside_env, "TMPDIR": str(folder)},
            capture_output=True, text=True, timeout=1800,
        )

    with ThreadPoolExecutor(max_workers=AT_ONCE) as pool:
        yield {script: pool.submit(run, script) for script in selected}


@pytest.mark.parametrize("script", list(TABLES))
def test_quick_mode_completes_and_prints_its_tables(script, quick_runs):
    done = quick_runs[script].result()
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    for line in TABLES[script]:
        assert line in done.stdout, f"{line!r} missing from:\n{done.stdout[-3000:]}"
