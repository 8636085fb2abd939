"""The offline sample corpus: layout, planted cases, determinism and the atomic, reusable build."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smolforge.tasks.curate import sample_corpus as sc
from smolforge.tasks.curate.sample_corpus import MARKER, SampleCorpusError, build_sample_corpus

FOLDERS = ["html", "instruct", "jsonl", "pdf", "text", "warc"]


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    dest = tmp_path_factory.mktemp("sample") / "corpus"
    return dest, build_sample_corpus(dest)


def planted(summary: dict, case: str) -> list[dict]:
    return [p for p in summary["planted"] if p["case"] == case]


def test_layout_and_summary(built):
    dest, summary = built
    assert sorted(p.name for p in dest.iterdir() if p.is_dir()) == FOLDERS
    assert json.loads((dest / MARKER).read_text()) == summary
    for folder in FOLDERS:
        assert summary["counts"][folder] == sum(1 for p in (dest / folder).iterdir() if p.is_file())
    assert summary["counts"]["html"] >= sc.HTML_PAGES_PER_SCALE
    assert len(list((dest / "html").glob("pydoc-*.html"))) == sc.HTML_PAGES_PER_SCALE
    assert len(list((dest / "text").glob("shakespeare_*.txt"))) == 2 * sc.PLAYS_PER_SCALE
    # Big enough to be interesting, small enough for a whole flow to run in CI.
    assert 5_000_000 < summary["total_bytes"] < 15_000_000
    assert not list(dest.parent.glob("corpus.tmp-*"))


def test_planted_files_exist_with_the_promised_defect(built):
    dest, summary = built
    paths = {p["path"] for p in summary["planted"]}
    for rel in [
        "html/binary_image.html", "html/empty.html", "html/latin1_encoded.html", "html/pii_contacts.html",
        "html/foreign_language_nl.html", "html/boilerplate_news.html",
        "pdf/corrupt.pdf", "pdf/truncated.pdf", "pdf/encrypted.pdf", "pdf/empty.pdf", "pdf/scanned_no_text.pdf",
        "text/duplicate_exact.txt", "text/duplicate_near.txt", "text/empty.txt", "text/huge_concatenated.txt",
        "jsonl/malformed_lines.jsonl", "warc/sample.warc.gz",
    ]:
        assert rel in paths, rel
        assert (dest / rel).is_file(), rel
    for entry in summary["planted"]:
        assert entry["expect"] and (dest / entry["path"]).is_file()

    for rel in ["html/empty.html", "pdf/empty.pdf", "text/empty.txt"]:
        assert (dest / rel).stat().st_size == 0
    assert (dest / "html/binary_image.html").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    latin1 = (dest / "html/latin1_encoded.html").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        latin1.decode("utf-8")
    assert "é" in latin1.decode("latin-1")
    page = (dest / "html/pii_contacts.html").read_text()
    (pii,) = [p for p in planted(summary, "pii") if p["path"].startswith("html/")]
    assert all(e in page for e in pii["emails"]) and all(ip in page for ip in pii["ipv4"])
    for entry in planted(summary, "boilerplate"):
        text = (dest / entry["path"]).read_text()
        assert entry["drop_phrase"] in text and "<script>" in text and "<nav>" in text
        assert entry["keep_phrase"] in " ".join(text.split())


def test_text_duplicates_and_size_cap_cases(built):
    dest, summary = built
    (exact,) = planted(summary, "exact_duplicate")
    (near,) = planted(summary, "near_duplicate")
    original = (dest / exact["duplicate_of"]).read_bytes()
    assert (dest / exact["path"]).read_bytes() == original
    edited = (dest / near["path"]).read_text().split()
    assert edited != original.decode().split()
    assert len(edited) == len(original.decode().split())
    changed = sum(a != b for a, b in zip(edited, original.decode().split(), strict=True))
    assert 0 < changed <= 20
    assert (dest / "text/huge_concatenated.txt").stat().st_size >= sc.HUGE_DOC_BYTES


def test_both_spellings_of_a_play(built):
    dest, summary = built
    modern = (dest / "text/shakespeare_macbeth_modern.txt").read_text()
    folio = (dest / "text/shakespeare_macbeth_folio.txt").read_text()
    assert "Fair is foul, and foul is fair" in modern
    assert "faire is foule, and foule is faire" in folio
    (variant,) = planted(summary, "spelling_variant")
    assert variant["modern"] == "text/shakespeare_macbeth_modern.txt"


def test_pdfs(built):
    import pymupdf

    dest, summary = built
    (order,) = planted(summary, "page_order")
    with pymupdf.open(dest / order["path"]) as doc:
        assert doc.page_count >= 2
        assert [p.get_text().split("\n")[0] for p in doc] == order["page_starts"]
    assert len(set(order["page_starts"])) == len(order["page_starts"])

    with pytest.raises(pymupdf.FileDataError):
        pymupdf.open(dest / "pdf/corrupt.pdf")
    with pymupdf.open(dest / "pdf/encrypted.pdf") as doc:
        assert doc.needs_pass and not doc.authenticate("wrong")
        assert doc.authenticate(planted(summary, "encrypted_pdf")[0]["password"])
        assert "ACT I" in doc[0].get_text()
    with pymupdf.open(dest / "pdf/scanned_no_text.pdf") as doc:
        assert doc[0].get_text().strip() == "" and doc[0].get_images()
    (truncated,) = planted(summary, "truncated_pdf")
    donor = (dest / truncated["truncated_from"]).read_bytes()
    assert donor.startswith((dest / truncated["path"]).read_bytes())
    assert b"%%EOF" not in (dest / truncated["path"]).read_bytes()


def test_jsonl_is_multilingual_with_planted_bad_lines(built):
    dest, summary = built
    languages = set()
    for path in (dest / "jsonl").glob("chatterbot_*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            assert set(record) == {"id", "text", "language"} and record["text"].strip()
            languages.add(record["language"])
    assert {"en", "fr", "es", "de", "it", "pt", "nl", "tr", "ja", "ru"} <= languages
    assert sorted(languages) == summary["jsonl_languages"]

    lines = (dest / "jsonl/malformed_lines.jsonl").read_text().splitlines()
    by_case = {p["case"]: p["line"] for p in summary["planted"] if p["path"] == "jsonl/malformed_lines.jsonl"}
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[by_case["not_json"] - 1])
    assert "text" not in json.loads(lines[by_case["missing_text"] - 1])
    assert not isinstance(json.loads(lines[by_case["text_not_string"] - 1])["text"], str)
    assert "@example.net" in json.loads(lines[by_case["pii"] - 1])["text"]


def test_warc_holds_html_and_one_image(built):
    from warcio.archiveiterator import ArchiveIterator

    dest, summary = built
    with open(dest / "warc/sample.warc.gz", "rb") as stream:
        types = [r.http_headers.get_header("Content-Type") for r in ArchiveIterator(stream) if r.rec_type == "response"]
    (case,) = planted(summary, "non_html_response")
    assert len(types) == case["responses"] and types.count("image/png") == 1
    assert sum(t.startswith("text/html") for t in types) == len(types) - 1
    with gzip.open(dest / "warc/sample.warc.gz") as f:
        assert f.read(8) == b"WARC/1.0"


def test_second_call_reuses_the_corpus(built, monkeypatch):
    dest, summary = built
    before = {p: p.stat().st_mtime_ns for p in dest.rglob("*")}

    def no_rebuild(*args, **kwargs):
        raise AssertionError("a complete corpus must not be rebuilt")

    monkeypatch.setattr(sc, "_build", no_rebuild)
    assert build_sample_corpus(dest) == summary
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*")} == before


def test_same_bytes_from_another_process(built, tmp_path):
    """Another interpreter, hash seed and working directory must not change a single byte."""
    dest, summary = built
    other = tmp_path / "again"
    code = (
        "import sys; from pathlib import Path; from smolforge.tasks.curate.sample_corpus import build_sample_corpus; "
        "build_sample_corpus(Path(sys.argv[1]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code, str(other)], check=True, cwd=tmp_path, env=env, timeout=120)
    assert tree_hashes(other) == tree_hashes(dest)
    assert json.loads((other / MARKER).read_text())["fingerprint"] == summary["fingerprint"]


def fake_build(html_name: str):
    """Stands in for the real build where only the folder handling is under test."""

    def build(root: Path, sources, scale: int) -> dict:
        (root / "html").mkdir()
        (root / "html" / html_name).write_text("<p>fresh</p>")
        return {"corpus_version": sc.CORPUS_VERSION, "scale": scale, "fingerprint": html_name}

    return build


def test_outdated_corpus_is_replaced(tmp_path, monkeypatch):
    old = tmp_path / "corpus"
    (old / "html").mkdir(parents=True)
    (old / "html" / "stale.html").write_text("<p>from an older layout</p>")
    (old / MARKER).write_text(json.dumps({"corpus_version": 0, "scale": 1}))
    monkeypatch.setattr(sc, "_build", fake_build("new.html"))
    assert build_sample_corpus(old)["fingerprint"] == "new.html"
    assert sorted(p.name for p in (old / "html").iterdir()) == ["new.html"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]  # no temporary or old folders left


def test_a_corpus_finished_meanwhile_by_another_process_wins(tmp_path, monkeypatch):
    dest = tmp_path / "corpus"
    theirs = {"corpus_version": sc.CORPUS_VERSION, "scale": 1, "fingerprint": "theirs"}

    def racing_build(root: Path, sources, scale: int) -> dict:
        (dest / "html").mkdir(parents=True)
        (dest / MARKER).write_text(json.dumps(theirs))
        return fake_build("ours.html")(root, sources, scale)

    monkeypatch.setattr(sc, "_build", racing_build)
    assert build_sample_corpus(dest) == theirs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


def test_refuses_a_folder_that_is_not_a_corpus(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SampleCorpusError, match="not a sample corpus"):
        build_sample_corpus(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_missing_package_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "chatterbot_corpus", None)  # makes the import fail
    with pytest.raises(SampleCorpusError, match="pip install chatterbot-corpus"):
        build_sample_corpus(tmp_path / "corpus")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("scale", [0, -1, 1.5, True])
def test_rejects_bad_scale(tmp_path, scale):
    with pytest.raises(ValueError, match="scale"):
        build_sample_corpus(tmp_path / "corpus", scale=scale)
