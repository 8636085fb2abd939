"""Finding a corpus's dataset by key, copying it out (whole or filtered, Parquet or JSONL) and
pushing a copy to the Hugging Face hub.

A copy is written into a temporary folder beside the destination and renamed into place
(`atomic_folder`), so an interrupted export leaves the destination as it was.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.dataset as pds

from smolforge.artifacts import MANIFEST, ArtifactRef, ArtifactStore, atomic_folder
from smolforge.tasks.curate import dataset, dataset_card
from smolforge.tasks.curate.dataset import DatasetError

KINDS = ("corpus", "retrain-data")  # the artifacts that hold a dataset
FORMATS = ("parquet", "jsonl")


@dataclass
class Corpus:
    """A complete corpus artifact with a dataset, as `dataset show` lists it."""

    ref: ArtifactRef
    created: str
    profile: dict[str, Any]

    @property
    def folder(self) -> Path:
        return self.ref.path / dataset.FOLDER


def corpora(store: ArtifactStore) -> list[Corpus]:
    """Every corpus with a dataset, oldest first (by creation time, then key). A folder with a
    manifest is complete (artifacts are renamed into place); its files are not hashed here, which
    for a large corpus would read every byte of it to list it."""
    found = []
    for kind in KINDS:
        for manifest in sorted((store.root / kind).glob(f"*/{MANIFEST}")):
            folder = manifest.parent
            if not (folder / dataset.FOLDER / dataset.PROFILE).is_file():
                continue
            ref = store.ref(kind, folder.name)
            found.append(Corpus(ref, ref.manifest().get("created", ""), dataset.read_profile(folder / dataset.FOLDER)))
    return sorted(found, key=lambda c: (c.created, c.ref.key))


def find_corpus(store: ArtifactStore, spec: str) -> Corpus:
    """`latest`, a key or a unique key prefix (of at least 6 characters); else a DatasetError listing what exists."""
    every = corpora(store)
    if spec == "latest" and every:
        return every[-1]
    matches = [c for c in every if len(spec) >= 6 and c.ref.key.startswith(spec)]
    if len(matches) == 1:
        return matches[0]
    listing = "; ".join(f"{c.ref.kind} {c.ref.key} ({c.created}, {c.profile['rows']:,} documents)" for c in every)
    if not every:
        raise DatasetError(f"no corpus with a dataset in {store.root}: curate one first (smolforge run curate)")
    why = f"{len(matches)} corpora start with {spec!r}" if matches else f"no corpus {spec!r}"
    raise DatasetError(f"{why} in {store.root}; the corpora are: {listing}")


def _filter(source: str | None, language: str | None) -> Any:
    expression = None
    for column, value in (("source", source), ("language", language)):
        if value is not None:
            term = pds.field(column) == value
            expression = term if expression is None else expression & term
    return expression


def _values(dataset_: pds.Dataset, column: str) -> str:
    values = sorted({v for v in dataset_.to_table(columns=[column]).column(column).to_pylist() if v is not None})
    return ", ".join(values) or "none"


def export(
    corpus: Corpus, dest: Path, *, fmt: str = "parquet", source: str | None = None, language: str | None = None,
    overwrite: bool = False, max_file_mb: int = 256, row_group_mb: int = 32,
) -> dict[str, Any]:
    """Copy the corpus's documents (those of `source` and `language` when given) into `dest` as
    Parquet or JSONL files under `data/`, with a card; returns what was written."""
    if fmt not in FORMATS:
        raise DatasetError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    dest = Path(dest).expanduser().resolve()
    if dest.exists() and not dest.is_dir():
        raise DatasetError(f"{dest} is a file; give a folder to export into")
    if dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise DatasetError(f"{dest} exists and is not empty; choose an empty folder or pass --overwrite to replace it")
    rows = dataset.open_dataset(corpus.folder)
    where = _filter(source, language)
    matched = rows.count_rows(filter=where) if where is not None else corpus.profile["rows"]
    if matched == 0:
        asked = " and ".join(f"{k} {v!r}" for k, v in (("source", source), ("language", language)) if v is not None)
        raise DatasetError(
            f"no document of corpus {corpus.ref.key} has {asked or 'any row'}: nothing written. Its sources are "
            f"{_values(rows, 'source')}; its languages {_values(rows, 'language')}"
        )
    with atomic_folder(dest) as tmp:
        batches = rows.to_batches(filter=where, batch_size=4096)
        files = _write_parquet(batches, tmp / dataset.DATA, max_file_mb, row_group_mb) if fmt == "parquet" else _write_jsonl(batches, tmp / dataset.DATA, max_file_mb)
        written = {"rows": matched, "files": len(files), "bytes": sum(f.stat().st_size for f in files), "format": fmt}
        languages = rows.to_table(columns=["language"], filter=where).group_by("language").aggregate([("language", "count")])
        _export_card(tmp, corpus, fmt, source, language, written, languages.column("language").to_pylist())
    return {**written, "dest": str(dest)}


def _write_parquet(batches, folder: Path, max_file_mb: int, row_group_mb: int) -> list[Path]:
    import pyarrow as pa

    writer = dataset.PartWriter(folder, max_file_mb, row_group_mb)
    for batch in batches:
        if batch.num_rows:
            writer.write(pa.Table.from_batches([batch]))
    return writer.close()


def _write_jsonl(batches, folder: Path, max_file_mb: int) -> list[Path]:
    """One JSON object a line (pandas writes them), a new file after `max_file_mb`."""
    folder.mkdir(parents=True)
    parts: list[Path] = []
    out, written = None, 0
    for batch in batches:
        if not batch.num_rows:
            continue
        if out is None:
            parts.append(folder / f".part-{len(parts):05d}.jsonl")
            out, written = open(parts[-1], "w", encoding="utf-8"), 0
        text = batch.to_pandas().to_json(orient="records", lines=True, force_ascii=False)
        out.write(text if text.endswith("\n") else text + "\n")
        written += len(text)
        if written >= max_file_mb * dataset.MB:
            out.close()
            out = None
    if out is not None:
        out.close()
    named = []
    for i, part in enumerate(parts):
        final = folder / f"train-{i:05d}-of-{len(parts):05d}.jsonl"
        os.replace(part, final)
        named.append(final)
    return named


def _export_card(
    folder: Path, corpus: Corpus, fmt: str, source: str | None, language: str | None, written: dict[str, Any], languages: list[str | None]
) -> None:
    """The corpus's card under a header saying what this copy holds."""
    chosen = ", ".join(f"{k} = {v}" for k, v in (("source", source), ("language", language)) if v is not None)
    profile = {**corpus.profile, "languages": {lang: 0 for lang in sorted(filter(None, languages))}}
    header = dataset_card.front_matter(profile, f"data/*.{fmt}", f"smolforge corpus {corpus.ref.key[:12]}")
    note = (
        f"\n> Exported from {corpus.ref.kind} `{corpus.ref.key}`: {written['rows']:,} documents"
        + (f" ({chosen})" if chosen else "")
        + f" in {written['files']} {fmt} file(s). The numbers below are the whole corpus's.\n\n"
    )
    (folder / dataset.CARD).write_text(header + note + dataset_card.card_body(corpus.folder), encoding="utf-8")
    (folder / "export.json").write_text(json.dumps({"corpus": corpus.ref.key, "kind": corpus.ref.kind, "source": source, "language": language, **written}, indent=2), encoding="utf-8")


class HubUnavailable(DatasetError):
    """The upload cannot happen from here (offline, no token, the hub unreachable); the export stands."""


def push_to_hub(folder: Path, repo: str, private: bool = True) -> str:
    """Upload an exported folder to the hub as the dataset repository `repo` (created if needed,
    private unless said otherwise); returns its URL. Needs a hub token (`hf auth login` or HF_TOKEN)
    and a network; says which is missing instead of failing half-way."""
    import httpx
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError

    later = f"the export in {folder} is complete; upload it later with `hf upload {repo} {folder} --repo-type dataset`"
    if constants.HF_HUB_OFFLINE:
        raise HubUnavailable(f"offline (HF_HUB_OFFLINE is set): nothing was uploaded to {repo}; {later}")
    token = get_token()
    if token is None:
        raise HubUnavailable(f"no Hugging Face token (run `hf auth login` or set HF_TOKEN): nothing was uploaded to {repo}; {later}")
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="dataset", commit_message="Upload a smolforge corpus")
    except (HfHubHTTPError, httpx.HTTPError, OSError) as exc:
        raise HubUnavailable(f"the upload to {repo} failed ({type(exc).__name__}: {exc}); {later}") from None
    return str(url)
