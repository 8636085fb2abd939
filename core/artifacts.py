"""Content-keyed artifact folders, written atomically, passed between tasks as small references.

An artifact's key is the hash of what made it (the step's code, its config and its inputs' keys),
so the key is known before the work is done: a task looks in the store first and only computes what
is missing. Every folder holds a `manifest.json` with the hash of each file, so a deleted or
corrupted artifact is noticed and recomputed instead of trusted.

The store is a folder of the project (the default) or an fsspec URL every worker can reach
(`SMOLFORGE_ARTIFACTS_URL=s3://bucket/prefix`). A remote store keeps the same layout and the same
manifests; an artifact is built in a local folder, uploaded, and its manifest uploaded last, so a
reader never sees a half-written one. Code reads a remote artifact through a local copy under the
project folder, fetched on first use and checked file by file against the remote manifest's hashes.
"""

from __future__ import annotations

import contextlib
import functools
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

from smolforge.environment import artifacts_location, is_remote, project_home
from smolforge.errors import ConfigError

MANIFEST = "manifest.json"


class ArtifactError(RuntimeError):
    """A remote artifact that cannot be brought to this machine intact: the message names its URL."""


class ArtifactRef(BaseModel):
    """What tasks pass around instead of data: small, picklable, shown as JSON in the Prefect UI."""

    kind: str
    key: str
    uri: str

    @property
    def path(self) -> Path:
        """The folder to read: the artifact itself, or for a remote one its checked local copy."""
        return local_folder(self.uri)

    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / MANIFEST).read_text(encoding="utf-8"))


def local_folder(uri: str) -> Path:
    """The folder to read for an artifact's URI (as a ref or a corpus record holds it): a local
    path as is; a remote store's `<url>/<kind>/<key>` through this machine's copy, fetched and
    checked against the remote manifest on first use in the process."""
    if "://" not in uri:
        return Path(uri)
    url, kind, key = uri.rsplit("/", 2)
    store = store_at(url)
    folder = store.path(kind, key)
    if folder not in _checked_copies or not (folder / MANIFEST).is_file():
        problem = store.problem(kind, key)
        if problem is not None:
            raise ArtifactError(f"artifact {uri} cannot be read: {problem}")
    return folder


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


# Local copies of remote artifacts that `problem` has checked (or `write` made) in this process: code
# reads `ArtifactRef.path` many times per step, and a copy is hashed once, not at every read.
_checked_copies: set[Path] = set()
_checked_urls: set[str] = set()


def storage_options(url: str) -> dict[str, Any]:
    """fsspec options for a store URL: S3 takes its endpoint from `AWS_ENDPOINT_URL` (MinIO, a test
    server); keys come from the standard AWS variables, which the S3 client reads itself."""
    if url.split("://", 1)[0] not in ("s3", "s3a"):
        return {}
    # Other workers publish artifacts at any time: a cached listing would hide them from this one.
    options: dict[str, Any] = {"use_listings_cache": False}
    if os.environ.get("AWS_ENDPOINT_URL"):
        options["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
    return options


def _filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem and the path inside it for a store URL."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url, **storage_options(url))
    except ImportError as exc:
        raise ConfigError(f"SMOLFORGE_ARTIFACTS_URL={url}: {exc} (for s3:// install smolforge[s3])") from None
    return fs, path.rstrip("/")


def cache_folder(home: Path, url: str) -> Path:
    """Where this machine keeps its copies of a remote store's artifacts: one folder per URL."""
    return home / "cache" / "artifacts" / hashlib.blake2b(url.encode(), digest_size=6).hexdigest()


def store_at(location: str, home: Path | None = None) -> ArtifactStore:
    """The store at `location`: a folder (or `file://` URL), or a remote fsspec URL read through a
    local copy under `home` (default: this process's project folder)."""
    if is_remote(location):
        url = location.rstrip("/")
        return ArtifactStore(cache_folder(home or project_home(), url), url=url)
    return ArtifactStore(Path(location.removeprefix("file://")))


def project_store(home: Path) -> ArtifactStore:
    """The project's store: `$SMOLFORGE_ARTIFACTS_URL`, or `<project folder>/artifacts`."""
    return store_at(artifacts_location(home), home)


def store_of(ref: ArtifactRef) -> ArtifactStore:
    """The store `ref` lives in (its inputs are found beside it)."""
    if "://" in ref.uri:
        return store_at(ref.uri.rsplit("/", 2)[0])
    return ArtifactStore(Path(ref.uri).parent.parent)


class ArtifactStore:
    """Folders under `root/<kind>/<key>`; a folder exists only once it is complete.

    With `url` the store is remote and `root` is this machine's copy of it: the same layout, the
    remote manifest deciding what is complete."""

    def __init__(self, root: Path, url: str | None = None):
        self.root = Path(root)
        self.url = url

    @property
    def location(self) -> str:
        """What to show a user: the remote URL, or the folder."""
        return self.url or str(self.root)

    @functools.cached_property
    def _remote(self) -> tuple[Any, str]:
        assert self.url is not None
        return _filesystem(self.url)

    def _remote_folder(self, kind: str, key: str) -> str:
        return f"{self._remote[1]}/{kind}/{key}"

    def check(self) -> None:
        """Raise ConfigError, naming the URL and what is missing, when a remote store cannot be used
        (no credentials, no such bucket): called before a run starts work, once per process."""
        if self.url is None or self.url in _checked_urls:
            return
        s3 = self.url.split("://", 1)[0] in ("s3", "s3a")
        if s3 and not (os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY")) and not (
            os.environ.get("AWS_PROFILE") or Path("~/.aws/credentials").expanduser().is_file()
        ):
            raise ConfigError(
                f"SMOLFORGE_ARTIFACTS_URL={self.url}: no S3 credentials; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for a server other than AWS, e.g. MinIO)"
            )
        fs, path = self._remote
        bucket = path.split("/", 1)[0]
        endpoint = os.environ.get("AWS_ENDPOINT_URL", "the default endpoint") if s3 else self.url
        try:
            found = fs.exists(bucket)
        except PermissionError as exc:
            raise ConfigError(f"SMOLFORGE_ARTIFACTS_URL={self.url}: access refused at {endpoint}: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"SMOLFORGE_ARTIFACTS_URL={self.url}: cannot reach {endpoint}: {exc}") from None
        if not found:
            raise ConfigError(f"SMOLFORGE_ARTIFACTS_URL={self.url}: bucket {bucket!r} does not exist at {endpoint}; create it first")
        _checked_urls.add(self.url)

    def path(self, kind: str, key: str) -> Path:
        """The local folder of an artifact (for a remote store, where its copy is kept)."""
        return self.root / kind / key

    def ref(self, kind: str, key: str) -> ArtifactRef:
        uri = f"{self.url}/{kind}/{key}" if self.url else str(self.path(kind, key))
        return ArtifactRef(kind=kind, key=key, uri=uri)

    def problem(self, kind: str, key: str) -> str | None:
        """Why the artifact cannot be trusted, or None when every file matches its manifest. For a
        remote store the local copy is made or mended first: what is missing or differs is fetched
        again and checked against the remote manifest, so None means the copy is ready to read."""
        if self.url is not None:
            return self._fetch(kind, key)
        folder = self.path(kind, key)
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return "missing"
        except (OSError, ValueError) as exc:
            return f"unreadable manifest: {exc}"
        for name, meta in manifest.get("files", {}).items():
            problem = _file_problem(folder / name, name, meta)
            if problem is not None:
                return problem
        return None

    def _fetch(self, kind: str, key: str) -> str | None:
        """Check the remote artifact's files by size (one listing), then bring this machine's copy
        in line with its manifest: only files missing here or failing their hash are downloaded,
        each checked before it replaces anything."""
        fs, _ = self._remote
        remote = self._remote_folder(kind, key)
        try:
            raw = fs.cat_file(f"{remote}/{MANIFEST}")
            files = json.loads(raw).get("files", {})
        except FileNotFoundError:
            return "missing"
        except (OSError, ValueError) as exc:
            return f"unreadable manifest in {self.url}: {exc}"
        sizes = {p[len(remote) + 1 :]: info["size"] for p, info in fs.find(remote, detail=True).items()}
        for name, meta in files.items():
            if sizes.get(name) != meta["size"]:
                found = "is missing" if name not in sizes else f"has {sizes[name]} bytes, manifest says {meta['size']}"
                return f"file {name} {found} in {self.url}/{kind}/{key}"
        folder = self.path(kind, key)
        folder.mkdir(parents=True, exist_ok=True)
        tag = f".part-{os.getpid()}-{threading.get_ident()}"  # two threads may fetch one artifact
        stale = [name for name, meta in files.items() if _file_problem(folder / name, name, meta) is not None]
        if stale:
            (folder / MANIFEST).unlink(missing_ok=True)  # the copy is not read while it is mended
            parts = [folder / f"{name}{tag}" for name in stale]
            for part in parts:
                part.parent.mkdir(parents=True, exist_ok=True)
            try:
                fs.get([f"{remote}/{name}" for name in stale], [str(p) for p in parts])
                for name, part in zip(stale, parts):
                    if _file_problem(part, name, files[name]) is not None:
                        return f"file {name} does not match its hash in {self.url}/{kind}/{key}"
                    os.replace(part, folder / name)
            finally:
                for part in parts:
                    part.unlink(missing_ok=True)
        # the copy's manifest last, as on the remote: a copy without one is never read
        (folder / f"{MANIFEST}{tag}").write_bytes(raw)
        os.replace(folder / f"{MANIFEST}{tag}", folder / MANIFEST)
        _checked_copies.add(folder)
        return None

    def has(self, kind: str, key: str) -> bool:
        """Whether the artifact's manifest is there (published), without checking its files."""
        if self.url is None:
            return (self.path(kind, key) / MANIFEST).is_file()
        fs, _ = self._remote
        return bool(fs.exists(f"{self._remote_folder(kind, key)}/{MANIFEST}"))

    def get(self, kind: str, key: str) -> ArtifactRef | None:
        return self.ref(kind, key) if self.problem(kind, key) is None else None

    @contextlib.contextmanager
    def write(
        self, kind: str, key: str, *, step: str, inputs: list[ArtifactRef] | None = None, config: Any = None
    ) -> Iterator[tuple[Path, dict[str, Any]]]:
        """Yield a temp folder and a dict for metrics; on success hash the files, write the
        manifest and rename the folder into place (and upload it to a remote store, manifest last).
        On error the temp folder is removed, so no half-written artifact is ever visible under its key."""
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
        if self.url is not None:
            self._upload(kind, key)

    def _upload(self, kind: str, key: str) -> None:
        """Publish a finished local folder: an earlier manifest is removed first (the artifact is
        absent, not half-replaced, while files go up), the files are uploaded, the manifest last.
        A crash in between leaves files without a manifest, which no reader trusts."""
        fs, _ = self._remote
        folder, remote = self.path(kind, key), self._remote_folder(kind, key)
        if fs.exists(f"{remote}/{MANIFEST}"):
            fs.rm(f"{remote}/{MANIFEST}")
        files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST]
        if files:
            fs.put([str(p) for p in files], [f"{remote}/{p.relative_to(folder).as_posix()}" for p in files])
        fs.put_file(str(folder / MANIFEST), f"{remote}/{MANIFEST}")
        _checked_copies.add(folder)

    def remove(self, kind: str, key: str) -> None:
        """Delete an artifact: the remote manifest first (it is gone for every reader at once),
        then its files, then the local folder."""
        if self.url is not None:
            fs, _ = self._remote
            remote = self._remote_folder(kind, key)
            if fs.exists(f"{remote}/{MANIFEST}"):
                fs.rm(f"{remote}/{MANIFEST}")
            if fs.exists(remote):
                fs.rm(remote, recursive=True)
            _checked_copies.discard(self.path(kind, key))
        shutil.rmtree(self.path(kind, key), ignore_errors=True)

    def kinds_of(self, key: str) -> list[str]:
        """The kinds holding an artifact (complete or not) under `key`."""
        if self.url is None:
            return sorted(p.parent.name for p in self.root.glob(f"*/{key}"))
        fs, root = self._remote
        return sorted(p.split("/")[-2] for p in fs.glob(f"{root}/*/{key}"))

    def list(self) -> list[dict[str, Any]]:
        """Manifests of every complete artifact, with size and where it is, and the problem, if any."""
        if self.url is not None:
            return self._list_remote()
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

    def _list_remote(self) -> list[dict[str, Any]]:
        fs, root = self._remote
        found = sorted(fs.glob(f"{root}/*/*/{MANIFEST}"))
        rows = []
        for name, raw in sorted(fs.cat(found, on_error="return").items()) if found else []:
            kind, key = name.split("/")[-3:-1]
            try:
                manifest = json.loads(raw)
            except (TypeError, ValueError):  # an unreadable manifest (or the error reading it)
                manifest = {"kind": kind, "key": key, "inputs": []}
            manifest["bytes"] = sum(f.get("size", 0) for f in manifest.get("files", {}).values())
            manifest["path"] = f"{self.url}/{kind}/{key}"
            rows.append(manifest)
        return rows


def _file_problem(file: Path, name: str, meta: dict[str, Any]) -> str | None:
    if not file.is_file():
        return f"file {name} is missing"
    size = file.stat().st_size
    if size != meta["size"]:
        return f"file {name} has {size} bytes, manifest says {meta['size']}"
    if file_hash(file) != meta["xxh3"]:
        return f"file {name} does not match its hash"
    return None


def find_artifact(store: ArtifactStore, spec: str) -> ArtifactRef | None:
    """The complete artifact `kind:key` or a bare `key` (any kind) names in `store`, or None."""
    match = ARTIFACT_SPEC.match(spec)
    if match is None:
        return None
    kind, key = match.groups()
    for k in [kind] if kind else store.kinds_of(key):
        ref = store.get(k, key)
        if ref is not None:
            return ref
    return None
