"""Content-keyed artifact folders, written atomically, passed between tasks as small references.

An artifact's key is the hash of what made it (the step's code, its config and its inputs' keys),
so the key is known before the work is done: a task looks in the store first and only computes what
is missing. Every folder holds a `manifest.json` with the hash of each file, so a deleted or
corrupted artifact is noticed and recomputed instead of trusted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import xxhash
from pydantic import BaseModel

MANIFEST = "manifest.json"


class ArtifactRef(BaseModel):
    """What tasks pass around instead of data: small, picklable, shown as JSON in the Prefect UI."""

    kind: str
    key: str
    uri: str

    @property
    def path(self) -> Path:
        return Path(self.uri)

    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / MANIFEST).read_text(encoding="utf-8"))


def stable_hash(value: Any) -> str:
    """Hash of a JSON-able value, independent of dict order (config dicts, lists of keys)."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def file_hash(path: Path) -> str:
    digest = xxhash.xxh3_128()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's contents to disk (a folder: its entries, i.e. renames)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_folder(final: Path, replace: Callable[[Path], bool] | None = None, flush_files: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside `final` to fill; when the block completes, flush its files
    (unless `flush_files` is False) and rename it into place. Readers see the old folder or the new
    one complete, never a partial one: an existing `final` is renamed aside first and deleted after.
    `replace(final)` decides about a folder already there when the block completes: True replaces
    it (the default), False keeps it and discards what the block wrote, an exception refuses. On an
    error the temporary folder is removed and `final` is untouched.

    The one write-then-rename path of the project: artifacts, dedup indexes, checkpoints and the
    sample corpus all publish their folders through it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}"
    tmp = final.with_name(f".tmp-{final.name}-{tag}")
    tmp.mkdir()
    try:
        yield tmp
        if flush_files:
            for file in tmp.rglob("*"):
                if file.is_file():
                    fsync_path(file)
        fsync_path(tmp)
        old = None
        if final.exists():
            if replace is not None and not replace(final):
                return
            old = final.with_name(f".old-{final.name}-{tag}")
            os.rename(final, old)
        try:
            os.rename(tmp, final)
        except BaseException:
            if old is not None:
                os.rename(old, final)
            raise
        fsync_path(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def code_version(*files: str | Path) -> str:
    """Hash of source files: editing a step's code changes its artifacts' keys."""
    digest = hashlib.blake2b(digest_size=8)
    for f in files:
        digest.update(Path(f).read_bytes())
    return digest.hexdigest()


def recipe_key(step: str, code: str, config: Any, inputs: list[str]) -> str:
    return stable_hash({"step": step, "code": code, "config": config, "inputs": inputs})


ARTIFACT_SPEC = re.compile(r"^(?:([A-Za-z0-9_-]+):)?([0-9a-f]{12,})$")  # finetuned:<key>, or a bare key


class ArtifactStore:
    """Folders under `root/<kind>/<key>`; a folder exists only once it is complete."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def ref(self, kind: str, key: str) -> ArtifactRef:
        return ArtifactRef(kind=kind, key=key, uri=str(self.path(kind, key)))

    def problem(self, kind: str, key: str) -> str | None:
        """Why the artifact cannot be trusted, or None when every file matches its manifest."""
        folder = self.path(kind, key)
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return "missing"
        except (OSError, ValueError) as exc:
            return f"unreadable manifest: {exc}"
        for name, meta in manifest.get("files", {}).items():
            file = folder / name
            if not file.is_file():
                return f"file {name} is missing"
            if file.stat().st_size != meta["size"]:
                return f"file {name} has {file.stat().st_size} bytes, manifest says {meta['size']}"
            if file_hash(file) != meta["xxh3"]:
                return f"file {name} does not match its hash"
        return None

    def get(self, kind: str, key: str) -> ArtifactRef | None:
        return self.ref(kind, key) if self.problem(kind, key) is None else None

    @contextlib.contextmanager
    def write(
        self, kind: str, key: str, *, step: str, inputs: list[ArtifactRef] | None = None, config: Any = None
    ) -> Iterator[tuple[Path, dict[str, Any]]]:
        """Yield a temp folder and a dict for metrics; on success hash the files, write the
        manifest and rename the folder into place. On error the temp folder is removed, so no
        half-written artifact is ever visible under its key."""
        metrics: dict[str, Any] = {}
        # Files are not flushed one by one (for a merged 135M model that is a fifth of the merge's
        # own time): every read checks each file against the manifest's size and hash, so a file a
        # crash left short or empty makes the artifact re-made, never trusted. The rename is flushed.
        with atomic_folder(self.path(kind, key), flush_files=False) as tmp:  # a corrupt or partial earlier copy is replaced
            yield tmp, metrics
            files = {
                str(p.relative_to(tmp)): {"size": p.stat().st_size, "xxh3": file_hash(p)}
                for p in sorted(tmp.rglob("*"))
                if p.is_file()
            }
            manifest = {
                "kind": kind,
                "key": key,
                "step": step,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "inputs": [{"kind": r.kind, "key": r.key} for r in inputs or []],
                "config": config,
                "metrics": metrics,
                "files": files,
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")

    def list(self) -> list[dict[str, Any]]:
        """Manifests of every complete artifact, with size on disk and the problem, if any."""
        rows = []
        for manifest_file in sorted(self.root.glob(f"*/*/{MANIFEST}")):
            folder = manifest_file.parent
            try:
                manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
            except ValueError:
                manifest = {"kind": folder.parent.name, "key": folder.name, "inputs": []}
            manifest["bytes"] = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            manifest["path"] = str(folder)
            rows.append(manifest)
        return rows


def find_artifact(store: ArtifactStore, spec: str) -> ArtifactRef | None:
    """The complete artifact `kind:key` or a bare `key` (any kind) names in `store`, or None."""
    match = ARTIFACT_SPEC.match(spec)
    if match is None:
        return None
    kind, key = match.groups()
    kinds = [kind] if kind else sorted(p.parent.name for p in store.root.glob(f"*/{key}"))
    for k in kinds:
        ref = store.get(k, key)
        if ref is not None:
            return ref
    return None
