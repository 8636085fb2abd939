"""Extraction: every kind's happy path, and every way a file can be bad ending as a reasoned drop."""

from __future__ import annotations

import codecs
import gzip
import io
import json

import pymupdf
import pytest

from smolforge.tasks.curate import extract as ex
from smolforge.tasks.curate.extract import DROP_REASONS, SOURCE_KINDS, extract_files, normalize_text

ARTICLE = [
    "The arctic tern makes the longest known migration of any animal, travelling from its Arctic "
    "breeding grounds to the Antarctic and back every year.",
    "Scientists tracking the birds with tiny geolocators found that individual terns can fly more "
    "than seventy thousand kilometres in a single year, following winding routes that use the winds.",
    "Because they live for thirty years or more, a single tern may travel a distance equivalent to "
    "three round trips to the Moon over its lifetime.",
]

PAGE = f"""<!DOCTYPE html>
<html><head><title>Terns</title>
<script>var tracker = "SCRIPT_MARKER";</script><style>body {{ color: red }}</style></head>
<body>
<header><div class="logo">HEADER_MARKER brand</div></header>
<nav><ul><li><a href="/">Home NAV_MARKER</a></li><li><a href="/about">About</a></li>
<li><a href="/contact">Contact</a></li></ul></nav>
<main><article><h1>The migration of the arctic tern</h1>
{"".join(f"<p>{p}</p>" for p in ARTICLE)}
</article></main>
<footer><p>FOOTER_MARKER 2024, all rights reserved.</p></footer>
<script>console.log("SCRIPT_TWO_MARKER")</script>
</body></html>
"""


def run(tmp_path, kind, files: dict[str, bytes], *, source="src", max_chars=100_000, **kwargs):
    """Write `files` under tmp_path and extract them; checks the contract every result must meet."""
    pairs = []
    for rel, data in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        pairs.append((str(path), rel))
    result = extract_files(pairs, kind, source, max_chars=max_chars, **kwargs)
    for drop in result.dropped:
        assert drop.step == "extract" and drop.source == source
        assert drop.reason in DROP_REASONS, drop
        assert len(drop.detail) <= 200
    for doc in result.kept:
        assert doc.source == source and doc.language is None and doc.text == normalize_text(doc.text)
    return result


def reasons(result) -> dict[str, str]:
    return {d.id: d.reason for d in result.dropped}


# --------------------------------------------------------------------------------------- general


def test_unknown_kind_raises_naming_kind_and_allowed(tmp_path):
    with pytest.raises(ValueError, match="docx") as err:
        extract_files([], "docx", "src", max_chars=100)
    assert all(kind in str(err.value) for kind in SOURCE_KINDS)


@pytest.mark.parametrize("kind", SOURCE_KINDS)
def test_empty_file_of_every_kind(tmp_path, kind):
    result = run(tmp_path, kind, {f"empty.{kind}": b""})
    assert not result.kept
    assert reasons(result) == {f"src/empty.{kind}": "empty_file"}


def test_missing_file_is_a_read_error(tmp_path):
    result = extract_files([(str(tmp_path / "gone.txt"), "gone.txt")], "text", "src", max_chars=100)
    assert reasons(result) == {"src/gone.txt": "read_error"}


def test_normalize_text():
    raw = "  indented title  \r\nline two\t \r\rx\u2028y" + "\n \n\t\n\n\n\n" + "end \n\n"
    assert normalize_text(raw) == "  indented title\nline two\n\nx\ny\n\n\nend"


def test_too_large_after_extraction_and_unread(tmp_path):
    result = run(tmp_path, "text", {"big.txt": b"x" * 300, "huge.txt": b"y" * 5000, "ok.txt": b"z" * 50}, max_chars=100)
    assert [d.id for d in result.kept] == ["src/ok.txt"]
    drops = {d.id: d for d in result.dropped}
    assert drops["src/big.txt"].reason == "too_large" and drops["src/big.txt"].chars == 300
    # over 20 bytes per allowed character: dropped from its size, without being read
    assert drops["src/huge.txt"].reason == "too_large" and "on disk" in drops["src/huge.txt"].detail


def test_min_chars(tmp_path):
    result = run(tmp_path, "text", {"short.txt": b"  hi \n", "long.txt": b"hello there"}, min_chars=5)
    assert [d.id for d in result.kept] == ["src/long.txt"]
    assert reasons(result) == {"src/short.txt": "empty_text"}


def test_unexpected_exception_is_extract_error(tmp_path, monkeypatch):
    import trafilatura

    def boom(*args, **kwargs):
        raise RuntimeError("boom " * 100)

    monkeypatch.setattr(trafilatura, "extract", boom)
    result = run(tmp_path, "html", {"a.html": PAGE.encode(), "b.html": PAGE.encode()})
    assert reasons(result) == {"src/a.html": "extract_error", "src/b.html": "extract_error"}
    assert result.dropped[0].detail.startswith("RuntimeError: boom")


# ------------------------------------------------------------------------------------------ html


def test_html_keeps_article_not_boilerplate(tmp_path):
    result = run(tmp_path, "html", {"site/terns.html": PAGE.encode()}, source="web")
    (doc,) = result.kept
    assert (doc.id, doc.path) == ("web/site/terns.html", "site/terns.html")
    for paragraph in ARTICLE:
        assert paragraph in doc.text
    for marker in ("SCRIPT_MARKER", "SCRIPT_TWO_MARKER", "NAV_MARKER", "HEADER_MARKER", "FOOTER_MARKER", "color"):
        assert marker not in doc.text


def test_html_honours_declared_legacy_charset(tmp_path):
    # windows-1252 page labelled iso-8859-1, as much of the old web is: browsers read it as 1252
    body = "".join(f"<p>{p} Café, naïve, 5 € each.</p>" for p in ARTICLE)
    page = f'<html><head><meta charset="iso-8859-1"></head><body><article>{body}</article></body></html>'
    (doc,) = run(tmp_path, "html", {"old.html": page.encode("cp1252")}).kept
    assert "Café, naïve, 5 € each." in doc.text


def test_html_binary_and_markupless(tmp_path):
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4
    result = run(tmp_path, "html", {"image.html": png, "plain.html": b"just words, no markup at all\n" * 5})
    assert reasons(result) == {"src/image.html": "binary_file", "src/plain.html": "not_html"}


def test_html_without_main_text(tmp_path):
    page = b"<html><head><title>x</title><script>var a = 1;</script></head><body></body></html>"
    assert reasons(run(tmp_path, "html", {"blank.html": page})) == {"src/blank.html": "no_main_text"}


# ------------------------------------------------------------------------------------------ text


def test_text_latin1_and_utf16_and_binary(tmp_path):
    french = "Le café était très agréable; déjà vu à Noël, l'élève naïf a goûté la crème brûlée.\n" * 20
    files = {
        "latin1.txt": french.encode("latin-1"),
        "utf16.txt": french.encode("utf-16"),  # with BOM, so its NUL bytes are not binary
        "blob.txt": b"abc\x00\x01\x02def",
    }
    result = run(tmp_path, "text", files)
    texts = {d.id: d.text for d in result.kept}
    assert texts == {"src/latin1.txt": french.strip(), "src/utf16.txt": french.strip()}
    assert reasons(result) == {"src/blob.txt": "binary_file"}


# ------------------------------------------------------------------------------------------- pdf


def make_pdf(pages: list[str], **save) -> bytes:
    doc = pymupdf.open()
    for text in pages:
        doc.new_page().insert_text((72, 72), text, fontsize=11)
    return doc.tobytes(**save)


def image_only_pdf(words: str) -> bytes:
    """A 'scan': the page is a picture of text, with no text layer."""
    text_doc = pymupdf.open()
    page = text_doc.new_page(width=600, height=200)
    page.insert_text((30, 110), words, fontsize=36)
    png = page.get_pixmap(dpi=150).tobytes("png")
    scan = pymupdf.open()
    scan.new_page(width=600, height=200).insert_image(pymupdf.Rect(0, 0, 600, 200), stream=png)
    return scan.tobytes()


PAGES = ["First page: the opening of the report.", "Second page: methods and data.", "Third page: results and end."]


def test_pdf_pages_in_order_joined_by_blank_line(tmp_path):
    (doc,) = run(tmp_path, "pdf", {"report.pdf": make_pdf(PAGES)}).kept
    assert doc.text.split(ex.PAGE_SEPARATOR) == PAGES


def test_pdf_bad_files(tmp_path):
    good = make_pdf(PAGES)
    files = {
        "garbled.pdf": b"%PDF-1.7\n" + bytes(range(256)) * 8,
        "notapdf.pdf": b"<html>I am a web page</html>",
        "truncated.pdf": good[: len(good) // 2],
        "locked.pdf": make_pdf(PAGES, encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="u", owner_pw="o"),
        # an owner password alone only restricts editing: the text is readable and kept
        "owner_only.pdf": make_pdf(PAGES, encryption=pymupdf.PDF_ENCRYPT_AES_256, owner_pw="o"),
    }
    result = run(tmp_path, "pdf", files)
    assert [d.id for d in result.kept] == ["src/owner_only.pdf"]
    assert reasons(result) == {
        "src/garbled.pdf": "pdf_corrupt",
        "src/notapdf.pdf": "pdf_corrupt",
        "src/truncated.pdf": "pdf_truncated",
        "src/locked.pdf": "pdf_encrypted",
    }


def test_pdf_without_text_layer_needs_ocr_when_ocr_off(tmp_path):
    result = run(tmp_path, "pdf", {"scan.pdf": image_only_pdf("Hello OCR world")}, ocr=False)
    assert reasons(result) == {"src/scan.pdf": "needs_ocr"}


def test_pdf_needs_ocr_when_tesseract_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "ocr_available", lambda: False)
    result = run(tmp_path, "pdf", {"scan.pdf": image_only_pdf("Hello OCR world")}, ocr=True)
    assert reasons(result) == {"src/scan.pdf": "needs_ocr"}


@pytest.mark.skipif(not ex.ocr_available(), reason="needs the ocr extra: pytesseract and the tesseract binary")
def test_pdf_ocr(tmp_path):
    (doc,) = run(tmp_path, "pdf", {"scan.pdf": image_only_pdf("Hello OCR world")}, ocr=True).kept
    assert "Hello OCR world" in doc.text


# ----------------------------------------------------------------------------------------- jsonl


def test_jsonl_lines(tmp_path):
    lines = [
        json.dumps({"text": "first doc", "id": "theirs-1", "language": "fr"}).encode(),
        b"   ",
        b'{"text": "unterminated',
        json.dumps({"body": "no text field"}).encode(),
        json.dumps({"text": 42}).encode(),
        b"[1, 2]",
        json.dumps({"text": "second doc\r\nwith two lines"}).encode(),
        b'{"text": "caf\xe9"}',
        b"",
    ]
    result = run(tmp_path, "jsonl", {"chat/a.jsonl": b"\n".join(lines)}, source="chat")
    assert [(d.id, d.path, d.text) for d in result.kept] == [
        ("chat/chat/a.jsonl#1", "chat/a.jsonl", "first doc"),
        ("chat/chat/a.jsonl#7", "chat/a.jsonl", "second doc\nwith two lines"),
    ]
    assert reasons(result) == {
        "chat/chat/a.jsonl#3": "bad_json",
        "chat/chat/a.jsonl#4": "missing_field",
        "chat/chat/a.jsonl#5": "bad_field_type",
        "chat/chat/a.jsonl#6": "bad_json",
        "chat/chat/a.jsonl#8": "bad_encoding",
    }


def test_jsonl_text_field_long_lines_and_utf16(tmp_path):
    records = [{"body": "short"}, {"body": "x" * 500}, {"body": "y" * 50}]
    files = {
        "a.jsonl": "\n".join(json.dumps(r) for r in records).encode(),
        "wide.jsonl": (json.dumps({"body": "hello"}) + "\n").encode("utf-16"),
        "bom.jsonl": codecs.BOM_UTF8 + json.dumps({"body": "with BOM"}).encode(),
        "packed.jsonl.gz": gzip.compress(b'{"body": "gzipped"}\n'),
    }
    result = run(tmp_path, "jsonl", files, text_field="body", max_chars=20)
    assert [(d.id, d.text) for d in result.kept] == [
        ("src/a.jsonl#1", "short"),
        ("src/bom.jsonl#1", "with BOM"),
        ("src/packed.jsonl.gz#1", "gzipped"),
    ]
    drops = {d.id: d for d in result.dropped}
    assert drops["src/a.jsonl#2"].reason == "too_large" and "line of" in drops["src/a.jsonl#2"].detail
    assert drops["src/a.jsonl#3"].reason == "too_large"  # parsed (73 bytes < 400), text over 20 chars
    assert drops["src/wide.jsonl"].reason == "bad_encoding"


# ------------------------------------------------------------------------------------------ warc


def make_warc(records: list[tuple[str, str, bytes, str]], gzip: bool = True) -> bytes:
    """(record type, content type, body, HTTP status) -> WARC bytes, after a warcinfo record."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    out = io.BytesIO()
    writer = WARCWriter(out, gzip=gzip)
    writer.write_record(writer.create_warcinfo_record("test.warc", {"software": "smolforge-tests"}))
    for i, (rec_type, content_type, body, status) in enumerate(records):
        if rec_type == "request":
            http = StatusAndHeaders(f"GET /{i} HTTP/1.1", [("Host", "example.org")], is_http_request=True)
        else:
            http = StatusAndHeaders(status, [("Content-Type", content_type)], protocol="HTTP/1.1")
        uri = f"https://example.org/{i}"
        writer.write_record(writer.create_warc_record(uri, rec_type, payload=io.BytesIO(body), http_headers=http))
    return out.getvalue()


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01"
CRAWL = [
    ("request", "", b"", ""),  # record 2
    ("response", "text/html; charset=utf-8", PAGE.encode(), "200 OK"),  # 3
    ("response", "image/png", PNG, "200 OK"),  # 4
    ("response", "text/html", b"<html><body>gone</body></html>", "404 Not Found"),  # 5
    ("response", "text/html", PAGE.replace("arctic", "Arctic").encode(), "200 OK"),  # 6
]


@pytest.mark.parametrize("gzip", [True, False])
def test_warc_keeps_html_responses(tmp_path, gzip):
    result = run(tmp_path, "warc", {"crawl.warc.gz": make_warc(CRAWL, gzip)}, source="crawl")
    assert [d.id for d in result.kept] == ["crawl/crawl.warc.gz#3", "crawl/crawl.warc.gz#6"]
    assert all(d.path == "crawl.warc.gz" and ARTICLE[1] in d.text for d in result.kept)
    assert "NAV_MARKER" not in result.kept[0].text
    assert reasons(result) == {"crawl/crawl.warc.gz#4": "not_html", "crawl/crawl.warc.gz#5": "http_status"}


@pytest.mark.parametrize("gzip", [True, False])
def test_warc_corrupt_keeps_records_before(tmp_path, gzip):
    data = make_warc(CRAWL, gzip)
    files = {"cut.warc": data[: len(data) - 300], "junk.warc": data + b"\x00not a warc record\x00" * 20}
    result = run(tmp_path, "warc", files)
    kept = [d.id for d in result.kept]
    assert kept == ["src/cut.warc#3", "src/junk.warc#3", "src/junk.warc#6"]
    assert reasons(result) == {
        "src/cut.warc#4": "not_html",
        "src/cut.warc#5": "http_status",
        "src/cut.warc#6": "warc_corrupt",  # the last record lost its end: dropped, not kept half
        "src/junk.warc#4": "not_html",
        "src/junk.warc#5": "http_status",
        "src/junk.warc#7": "warc_corrupt",
    }
