"""Every benchmark's `--quick` mode runs to its tables (bench/quickmode.py), so a bench that no
longer runs fails here instead of on the day someone wants its figures. The figures themselves are
not checked: speed and memory targets live in the benches, never in tests."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize(
    "script, tables",
    [
        ("curation.py", ["Throughput:", "Re-run with nothing changed"]),
        ("pretrain.py", ["tokens/s smolforge/mlflow", "tokens/s trainer", "optimizer.step() Muon"]),
        ("finetune.py", ["variant", "qlora peak / lora peak"]),
        ("sweep.py", ["sweep overhead per trial"]),
        ("evaluate.py", ["ratio to bare", "smolforge", "bare"]),
        ("merge.py", ["ratio to direct", "paired ratio stage/direct", "soup claim on held-out test records", "greedy soup"]),
        ("generate.py", ["first output on stdout", "process exit", "time to first token from the registry"]),
        ("cli.py", ["Start-up", "Re-run with nothing changed", "second/first: median"]),
    ],
)
def test_quick_mode_completes_and_prints_its_tables(script, tables, tmp_path, outside_env, sample_corpus):
    # the command-line bench's pipeline runs read the session's sample corpus instead of building one
    extra = ["--data-dir", str(sample_corpus)] if script == "cli.py" else []
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", *extra], cwd=tmp_path, env={**outside_env, "TMPDIR": str(tmp_path)},
        capture_output=True, text=True, timeout=1800,
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    for line in tables:
        assert line in done.stdout, f"{line!r} missing from:\n{done.stdout[-3000:]}"
