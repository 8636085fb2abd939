"""The artifact store and the cached step wrapper, called without Prefect."""

import json
from pathlib import Path

import pytest

from smolforge.artifacts import ArtifactStore
from smolforge.runtime import Runtime
from smolforge.steps import artifact_step

CALLS: list[str] = []


@artifact_step("demo")
def make_demo(out: Path, text: str, upstream: object | None, runtime: Runtime) -> dict:
    CALLS.append(text)
    (out / "data.txt").write_text(text)
    return {"chars": len(text)}


def test_write_is_atomic_and_manifest_lists_file_hashes(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(RuntimeError):
        with store.write("k", "abc", step="s") as (tmp, _):
            (tmp / "half.bin").write_bytes(b"x" * 10)
            raise RuntimeError("crash mid-write")
    assert not store.path("k", "abc").exists()
    assert not list((tmp_path / "k").iterdir())  # no temp folder left behind
    with store.write("k", "abc", step="s", config={"a": 1}) as (tmp, metrics):
        (tmp / "f.bin").write_bytes(b"hello")
        metrics["n"] = 1
    manifest = json.loads((store.path("k", "abc") / "manifest.json").read_text())
    assert manifest["files"]["f.bin"]["size"] == 5 and manifest["metrics"] == {"n": 1}
    assert store.problem("k", "abc") is None


def test_corruption_and_deletion_are_detected(tmp_path):
    store = ArtifactStore(tmp_path)
    with store.write("k", "abc", step="s") as (tmp, _):
        (tmp / "f.bin").write_bytes(b"hello")
    (store.path("k", "abc") / "f.bin").write_bytes(b"jello")
    assert "hash" in store.problem("k", "abc")
    # what a crash can leave of files the store does not flush one by one: empty, or a bare manifest
    (store.path("k", "abc") / "f.bin").write_bytes(b"")
    assert store.problem("k", "abc") == "file f.bin has 0 bytes, manifest says 5"
    manifest = (store.path("k", "abc") / "manifest.json").read_bytes()
    (store.path("k", "abc") / "manifest.json").write_bytes(b"")
    assert store.problem("k", "abc").startswith("unreadable manifest")
    (store.path("k", "abc") / "manifest.json").write_bytes(manifest)
    (store.path("k", "abc") / "f.bin").unlink()
    assert "missing" in store.problem("k", "abc")
    assert store.problem("k", "nope") == "missing"


def test_step_runs_once_per_recipe_and_recomputes_a_broken_artifact(tmp_path):
    CALLS.clear()
    runtime = Runtime(root=str(tmp_path), workers=1)
    a = make_demo.fn("hello", None, runtime)
    b = make_demo.fn("hello", None, Runtime(root=str(tmp_path), workers=4))  # runtime is not in the key
    assert a == b and CALLS == ["hello"]
    c = make_demo.fn("other", a, runtime)
    assert c.key != a.key and c.manifest()["inputs"] == [{"kind": "demo", "key": a.key}]
    (a.path / "data.txt").write_text("tampered")
    make_demo.fn("hello", None, runtime)
    assert CALLS == ["hello", "other", "hello"]
    assert (a.path / "data.txt").read_text() == "hello"
