"""Turn raw source files into `Doc` records: the mouth of the curation funnel.

Everything later in the funnel (language id, quality filters, dedup, PII) works on plain text, so
this step owns every format quirk: HTML boilerplate, PDF text layers and scans, odd encodings,
broken JSON lines, WARC containers. Two rules shape it:

* Nothing is lost silently. A file or record we cannot or will not use becomes a `Drop` with a
  stable reason string (the full list is in `DROP_REASONS`), so a run's report can say exactly
  why the funnel narrowed. A bad document never raises; only a wrong argument does.
* Ids are ours, never the data's: `<source>/<relative path>` for one-document-per-file kinds and
  `<source>/<relative path>#<n>` for the n-th JSONL line or WARC record (both 1-based), so they stay
  stable across runs however the data labels itself.

The caller fans `extract_files` out over a process pool, so the heavy libraries (pymupdf alone
takes most of a second to import) are imported on first use by the reader that needs them, and
each file is read at most once.
"""

from __future__ import annotations

import codecs
import functools
import gzip
import importlib.util
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from smolforge.tasks.curate.documents import Doc, Drop, StepResult

SOURCE_KINDS = ("html", "pdf", "text", "jsonl", "warc")
STEP = "extract"

DROP_REASONS = {
    "empty_file": "the file (or a WARC response body) has no bytes",
    "read_error": "the file could not be opened or read (missing, permissions, I/O error)",
    "too_large": "file or record bytes over 20x max_chars (not parsed), or extracted text over max_chars",
    "empty_text": "extracted text shorter than min_chars once stripped",
    "binary_file": "html/text file holding binary data (NUL bytes outside a UTF-16/32 BOM)",
    "not_html": "html file without markup, or WARC response whose content type is not HTML",
    "no_main_text": "trafilatura found no main content in the page",
    "pdf_corrupt": "not a PDF, or a PDF pymupdf cannot open or read",
    "pdf_truncated": "PDF whose %%EOF marker is missing and whose structure is broken",
    "pdf_encrypted": "PDF that needs a user password",
    "needs_ocr": "PDF without a usable text layer, and OCR is off or not installed",
    "ocr_failed": "tesseract failed or timed out on a page",
    "bad_encoding": "JSONL line (or whole file) that is not UTF-8",
    "bad_json": "JSONL line that is not a JSON object",
    "missing_field": "JSONL record without the text field",
    "bad_field_type": "JSONL record whose text field is not a string",
    "http_status": "WARC response with a non-2xx HTTP status",
    "warc_corrupt": "WARC that cannot be read past this record (records before it are kept)",
    "extract_error": "unexpected exception; detail holds its class and message",
}

# Bytes of input allowed per character of `max_chars` before a file (or JSONL line, or WARC record)
# is dropped unread: markup, fonts and images make inputs bigger than their text, but not by this
# much for anything worth keeping.
_BYTES_PER_CHAR = 20
_DETAIL_CHARS = 200

# A page with fewer non-space characters than this has no usable text layer (a scan, or a page of
# figures); a PDF averaging below it goes to OCR.
_MIN_PAGE_CHARS = 20
_OCR_DPI = 200
_OCR_PAGE_TIMEOUT_S = 120
# Pages are joined with a blank line: every downstream filter splits on "\n", and a blank line is
# how the other kinds already separate blocks; a form feed would read as a stray control character.
PAGE_SEPARATOR = "\n\n"

_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})


# ----------------------------------------------------------------------------------------------
# public API


def extract_files(
    files: list[tuple[str, str]],
    kind: str,
    source: str,
    *,
    max_chars: int,
    min_chars: int = 1,
    text_field: str = "text",
    ocr: bool = True,
) -> StepResult:
    """Read `files` ((absolute path, path relative to the source root) pairs) of one `kind`.

    Returns the extracted documents, normalised with `normalize_text`, and one `Drop` (step
    "extract") per file or record not kept. Raises `ValueError` only for bad arguments.
    """
    reader = _READERS.get(kind)
    if reader is None:
        raise ValueError(f"unknown source kind {kind!r}; expected one of {', '.join(SOURCE_KINDS)}")
    if max_chars < 1:
        raise ValueError(f"max_chars must be positive, got {max_chars}")
    opts = _Options(max_chars=max_chars, text_field=text_field, ocr=ocr)
    result = StepResult()
    for path, relpath in files:
        base_id = f"{source}/{relpath}"
        size = 0
        try:
            size = os.path.getsize(path)
            if size == 0:
                raise _Skip("empty_file")
            for suffix, got in reader(path, opts):
                if isinstance(got, _Skip):
                    _add_drop(result, base_id + suffix, source, got)
                else:
                    _keep(result, Doc(base_id + suffix, source, normalize_text(got), relpath), max_chars, min_chars)
        except _Skip as skip:
            _add_drop(result, base_id, source, skip, size)
        except OSError as err:
            _add_drop(result, base_id, source, _Skip("read_error", _describe(err)), size)
        except Exception as err:  # noqa: BLE001 -- one bad file must not sink the shard
            _add_drop(result, base_id, source, _Skip("extract_error", _describe(err)), size)
    return result


_NEWLINES = re.compile(r"\r\n?|[\x0b\x0c\x85\u2028\u2029]")
_TRAILING_SPACE = re.compile(r"[^\S\n]+$", re.MULTILINE)
_BLANK_RUNS = re.compile(r"\n{4,}")
# No-break and other fixed-width spaces (pydoc's HTML puts &nbsp; between every word): fastText and
# the filters split words on ASCII whitespace only, so such text would read as one long "word".
_ODD_SPACES = re.compile(r"[\u00a0\u2000-\u200a\u202f\u205f\u3000]")


def normalize_text(text: str) -> str:
    """Light, format-blind cleanup every kind gets: `\\n` newlines, plain spaces, no trailing spaces on lines,
    at most two blank lines in a row, no leading or trailing blank lines.

    Kept this small on purpose: anything that judges content belongs to a later, named step.
    """
    text = _NEWLINES.sub("\n", text)
    text = _ODD_SPACES.sub(" ", text)
    text = _TRAILING_SPACE.sub("", text)
    text = _BLANK_RUNS.sub("\n\n\n", text)
    return text.strip("\n")


@functools.cache
def ocr_available() -> bool:
    """True when the `ocr` extra is usable: pytesseract importable and tesseract on PATH."""
    return importlib.util.find_spec("pytesseract") is not None and shutil.which("tesseract") is not None


# ----------------------------------------------------------------------------------------------
# shared plumbing


@dataclass(frozen=True)
class _Options:
    max_chars: int
    text_field: str
    ocr: bool

    @property
    def max_bytes(self) -> int:
        return self.max_chars * _BYTES_PER_CHAR


class _Skip(Exception):
    """A document we will not keep, with its stable reason.

    One-document-per-file readers raise it; record readers yield it so the records after it
    still get read.
    """

    def __init__(self, reason: str, detail: str = "", chars: int = 0):
        super().__init__(reason)
        self.reason, self.detail, self.chars = reason, detail, chars


# A reader turns one file into (id suffix, text or _Skip) pairs: suffix "" for whole-file kinds,
# "#<n>" for records.
Reader = Callable[[str, _Options], Iterator[tuple[str, "str | _Skip"]]]


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def _add_drop(result: StepResult, doc_id: str, source: str, skip: _Skip, size: int = 0) -> None:
    chars = skip.chars or size
    result.dropped.append(Drop(doc_id, source, STEP, skip.reason, chars, skip.detail[:_DETAIL_CHARS]))


def _keep(result: StepResult, doc: Doc, max_chars: int, min_chars: int) -> None:
    if len(doc.text) > max_chars:
        result.drop(doc, STEP, "too_large", f"{len(doc.text)} chars > {max_chars}")
    elif len(doc.text.strip()) < min_chars:
        result.drop(doc, STEP, "empty_text", f"{len(doc.text.strip())} chars < {min_chars}")
    else:
        result.kept.append(doc)


def _whole_file(to_text: Callable[[bytes, _Options], str]) -> Reader:
    """Adapt a bytes -> text function to a reader of one document per file, refusing huge files
    before reading them."""

    def read(path: str, opts: _Options) -> Iterator[tuple[str, str]]:
        size = os.path.getsize(path)
        if size > opts.max_bytes:
            raise _Skip("too_large", f"{size} bytes on disk > {opts.max_bytes}", size)
        with open(path, "rb") as f:
            data = f.read()
        yield "", to_text(data, opts)

    return read


# Longest first: the UTF-32-LE BOM starts with the UTF-16-LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _decode(data: bytes, hints: tuple[str, ...] = ()) -> str | None:
    """Bytes to text, or None when the bytes are binary.

    Order: a BOM wins; NUL bytes without one mean binary; then UTF-8 (most files, and the only
    strict check that rarely passes by accident); then declared charsets (`hints`); then
    charset_normalizer's guess; latin-1 last because it decodes anything, so we never crash.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):  # a BOM is a clear statement: damage after it is just damage
            return data.decode(encoding, errors="replace")
    if b"\x00" in data:
        return None
    for encoding in ("utf-8", *hints):
        text = _try_decode(data, encoding)
        if text is not None:
            return text
    guess = _guess_encoding(data)  # the slow part, so only when the cheap tries failed
    text = _try_decode(data, guess) if guess else None
    return text if text is not None else data.decode("latin-1")


def _try_decode(data: bytes, encoding: str) -> str | None:
    try:
        return data.decode(encoding)
    except (LookupError, UnicodeDecodeError):
        return None


# charset_normalizer tells scripts apart well but single-byte Latin code pages badly (French in
# latin-1 comes out as Baltic cp1257). Within this family windows-1252 wins: it is the legacy
# encoding of most Western text and covers latin-1's printable range. Central European cp1250 text
# is the casualty, rarer in the corpora this targets than the French, Spanish or German it saves.
_LATIN_CODEPAGES = frozenset(
    "cp1250 cp1252 cp1254 cp1257 cp1258 cp437 cp775 cp850 cp852 cp858 hp_roman8 latin_1 "
    "iso8859_1 iso8859_2 iso8859_3 iso8859_4 iso8859_9 iso8859_10 iso8859_13 iso8859_14 iso8859_15 "
    "iso8859_16 mac_roman mac_latin2 mac_iceland mac_turkish".split()
)


def _guess_encoding(data: bytes) -> str | None:
    try:
        from charset_normalizer import from_bytes
    except ImportError:  # only a transitive dependency (trafilatura, requests); latin-1 then
        return None
    best = from_bytes(data).best()
    if best is None:
        return None
    if best.encoding in _LATIN_CODEPAGES and _try_decode(data, "cp1252") is not None:
        return "cp1252"
    return best.encoding


# ----------------------------------------------------------------------------------------------
# text


def _plain_text(data: bytes, opts: _Options) -> str:
    text = _decode(data)
    if text is None:
        raise _Skip("binary_file", "NUL bytes", len(data))
    return text


# ----------------------------------------------------------------------------------------------
# html

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.IGNORECASE)
_CONTENT_TYPE_CHARSET = re.compile(r"charset\s*=\s*[\"']?\s*([a-zA-Z0-9_.:-]+)", re.IGNORECASE)
# Any start/end tag, comment or doctype: enough to tell markup from a renamed text file.
_MARKUP = re.compile(r"<(?:[a-zA-Z][a-zA-Z0-9-]*[\s/>]|/[a-zA-Z]|!)")
_MARKUP_WINDOW = 100_000
# Browsers (WHATWG encoding spec) read these labels as windows-1252, and so does the web's content.
_AS_CP1252 = frozenset({"iso-8859-1", "iso8859-1", "latin1", "latin-1", "us-ascii", "ascii"})


def _charset_hint(label: str | None) -> tuple[str, ...]:
    if not label:
        return ()
    label = label.strip().lower()
    return ("cp1252",) if label in _AS_CP1252 else (label,)


def _html_text(data: bytes, opts: _Options, http_charset: str | None = None) -> str:
    # Declared charsets in the browser's order of trust: HTTP header, then <meta>. _decode tries
    # them after a BOM and after UTF-8, because pages often serve UTF-8 under a stale label.
    # trafilatura would guess on its own, but it ignores <meta charset>.
    meta = _META_CHARSET.search(data, 0, 8192)
    hints = _charset_hint(http_charset) + _charset_hint(meta.group(1).decode("ascii") if meta else None)
    html = _decode(data, hints)
    if html is None:
        raise _Skip("binary_file", "NUL bytes", len(data))
    if not _MARKUP.search(html, 0, _MARKUP_WINDOW):
        raise _Skip("not_html", "no markup", len(data))
    import trafilatura

    # favor_precision: FineWeb's setting, leaves out navigation-like blocks rather than risk them.
    # deduplicate stays off: its cache lives in the process, so the output would depend on which
    # files a worker happened to see before.
    text = trafilatura.extract(
        html,
        include_comments=False,
        include_tables=True,
        include_images=False,
        include_links=False,
        favor_precision=True,
        deduplicate=False,
    )
    if not text or not text.strip():
        raise _Skip("no_main_text", chars=len(data))
    return text


# ----------------------------------------------------------------------------------------------
# pdf


def _pdf_text(data: bytes, opts: _Options) -> str:
    if b"%PDF-" not in data[:1024]:
        raise _Skip("pdf_corrupt", "no %PDF- header", len(data))
    import pymupdf

    # mupdf keeps warnings in a process-wide store; clear it so it cannot grow over a long worker
    # life, and so what is left after a failure belongs to this file.
    pymupdf.TOOLS.reset_mupdf_warnings()
    # Writers put %%EOF last (incremental updates append another); its absence near the end is
    # the mark of a cut-off download. Some producers omit it from sound files, so it only counts
    # when mupdf also had to repair or failed. A file without one complete object is garbage
    # rather than a cut-off PDF.
    eof_missing = b"%%EOF" not in data[-2048:] and b"endobj" in data
    try:
        doc = pymupdf.open(stream=data, filetype="pdf")
    except RuntimeError as err:  # FileDataError and mupdf's own errors derive from it
        raise _Skip("pdf_truncated" if eof_missing else "pdf_corrupt", _mupdf_detail(err), len(data)) from None
    with doc:
        if doc.needs_pass:
            raise _Skip("pdf_encrypted", "needs a user password", len(data))
        if eof_missing and doc.is_repaired:
            # mupdf can often rebuild a cut-off file, but it cannot tell us what the missing bytes
            # held (pages, the end of the last page): a partial document is worse than none.
            raise _Skip("pdf_truncated", _mupdf_detail(None), len(data))
        if doc.page_count == 0:
            raise _Skip("pdf_corrupt", "no pages", len(data))
        try:
            pages = [page.get_text() for page in doc]
        except RuntimeError as err:
            raise _Skip("pdf_corrupt", _mupdf_detail(err), len(data)) from None
        visible = [_non_space(t) for t in pages]
        if sum(visible) / len(pages) < _MIN_PAGE_CHARS:
            if not (opts.ocr and ocr_available()):
                detail = f"{sum(visible) / len(pages):.1f} non-space chars/page over {len(pages)} pages"
                raise _Skip("needs_ocr", detail, len(data))
            # Only pages without their own text layer are OCRed: tesseract is the slow part, and a
            # real text layer beats any OCR of the same page.
            pages = [_ocr_page(doc[i]) if n < _MIN_PAGE_CHARS else pages[i] for i, n in enumerate(visible)]
    # strip(): tesseract ends each page with a form feed, mupdf with a newline
    return PAGE_SEPARATOR.join(text for text in (p.strip() for p in pages) if text)


def _non_space(text: str) -> int:
    return sum(map(len, text.split()))


def _mupdf_detail(err: BaseException | None) -> str:
    warnings = " | ".join(_mupdf_warnings().splitlines()[:3])
    parts = [_describe(err)] if err is not None else []
    return "; ".join(parts + ([f"mupdf: {warnings}"] if warnings else []))


def _mupdf_warnings() -> str:
    import pymupdf

    return pymupdf.TOOLS.mupdf_warnings() or ""


def _ocr_page(page) -> str:
    import pymupdf
    import pytesseract

    # The caller already runs one worker per core; tesseract's own OpenMP threads would only
    # fight them for the same cores. setdefault keeps an explicit user choice.
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    pixmap = page.get_pixmap(dpi=_OCR_DPI, colorspace=pymupdf.csGRAY, alpha=False)
    try:
        return pytesseract.image_to_string(pixmap.pil_image(), timeout=_OCR_PAGE_TIMEOUT_S)
    except (RuntimeError, pytesseract.TesseractError) as err:  # RuntimeError: the timeout
        raise _Skip("ocr_failed", f"page {page.number + 1}: {_describe(err)}") from None


# ----------------------------------------------------------------------------------------------
# jsonl


def _jsonl_records(path: str, opts: _Options) -> Iterator[tuple[str, str | _Skip]]:
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"  # datasets often ship .jsonl.gz; any name is read
    with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as f:
        head = f.read(4)
        # JSON Lines is UTF-8 by definition; a UTF-16/32 file cannot even be split into lines
        # bytewise, so the whole file goes, under the file's id.
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in head:
            raise _Skip("bad_encoding", "UTF-16/32 or binary, JSON Lines must be UTF-8")
        f.seek(len(codecs.BOM_UTF8) if head.startswith(codecs.BOM_UTF8) else 0)
        for n, line, length in _lines(f, opts.max_bytes):
            suffix = f"#{n}"
            if line is None:
                yield suffix, _Skip("too_large", f"line of {length} bytes > {opts.max_bytes}", length)
            elif line.strip():  # blank lines separate nothing and are skipped without a drop
                yield suffix, _jsonl_text(line, opts.text_field)


def _lines(f, limit: int) -> Iterator[tuple[int, bytes | None, int]]:
    """(1-based number, line or None when longer than `limit`, length) for each line, reading
    at most `limit` bytes of any line into memory."""
    n = 0
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        n += 1
        if len(line) <= limit or line.endswith(b"\n"):
            yield n, line, len(line)
            continue
        length = len(line)
        while line and not line.endswith(b"\n"):  # drain the rest of the oversized line
            line = f.readline(1 << 20)
            length += len(line)
        yield n, None, length


def _jsonl_text(line: bytes, field: str) -> str | _Skip:
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as err:
        return _Skip("bad_encoding", _describe(err), len(line))
    except ValueError as err:
        return _Skip("bad_json", _describe(err), len(line))
    if not isinstance(record, dict):
        return _Skip("bad_json", f"a JSON {type(record).__name__}, not an object", len(line))
    if field not in record:
        return _Skip("missing_field", f"no {field!r} field", len(line))
    text = record[field]
    if not isinstance(text, str):
        return _Skip("bad_field_type", f"{field!r} is {type(text).__name__}, not str", len(line))
    return text


# ----------------------------------------------------------------------------------------------
# warc


def _warc_records(path: str, opts: _Options) -> Iterator[tuple[str, str | _Skip]]:
    from warcio.archiveiterator import ArchiveIterator

    size = os.path.getsize(path)
    with open(path, "rb") as stream:
        archive = ArchiveIterator(stream)
        records = iter(archive)
        n = 0  # counts every record, kept or not, so a record's id never depends on filtering
        while True:
            n += 1
            try:
                record = next(records)
            except StopIteration:
                break
            except Exception as err:  # noqa: BLE001 -- warcio raises several kinds on bad bytes
                yield f"#{n}", _Skip("warc_corrupt", _describe(err))
                return
            try:
                got: str | _Skip | None = _warc_record_text(record, opts)
            except _Skip as skip:
                got = skip
            except Exception as err:  # noqa: BLE001 -- a broken body spoils one record, not the file
                got = _Skip("extract_error", _describe(err))
            # warcio stops quietly where a file was cut off: it hands out a short last record, or
            # takes a partial header for the end. So check each record got all its declared bytes,
            # and at the end that the records covered the whole file.
            try:
                archive.read_to_end()
            except Exception as err:  # noqa: BLE001
                yield f"#{n}", _Skip("warc_corrupt", _describe(err))
                return
            # warcio bounds a record's stream by its Content-Length; an unbounded one had none,
            # which a WARC record always has unless its header block was cut off.
            missing = getattr(record.raw_stream, "limit", None)
            if missing is None or missing > 0:
                detail = "header cut off" if missing is None else f"record cut short, {missing} bytes missing"
                yield f"#{n}", _Skip("warc_corrupt", detail)
                return
            if got is not None:
                yield f"#{n}", got
    if archive.offset < size:
        yield f"#{n}", _Skip("warc_corrupt", f"{size - archive.offset} bytes at the end are not a readable record")


def _warc_record_text(record, opts: _Options) -> str | None:
    """Text of an HTML response; None for records that are not documents at all (warcinfo,
    request, metadata, revisit, non-HTTP responses), which are skipped without a drop."""
    if record.rec_type != "response" or record.http_headers is None:
        return None
    length = int(record.rec_headers.get_header("Content-Length") or 0)
    status = record.http_headers.get_statuscode() or ""
    if not status.startswith("2"):
        raise _Skip("http_status", f"HTTP {status}", length)
    content_type = record.http_headers.get_header("Content-Type") or ""
    mime = content_type.split(";")[0].strip().lower()
    # A missing content type is left to the markup sniff in _html_text.
    if mime and mime not in _HTML_TYPES:
        raise _Skip("not_html", content_type, length)
    if length > opts.max_bytes:
        raise _Skip("too_large", f"record of {length} bytes > {opts.max_bytes}", length)
    body = record.content_stream().read()  # undoes chunked and gzip transfer encodings
    if not body:
        raise _Skip("empty_file", "empty response body")
    charset = _CONTENT_TYPE_CHARSET.search(content_type)
    return _html_text(body, opts, charset.group(1) if charset else None)


_READERS: dict[str, Reader] = {
    "html": _whole_file(_html_text),
    "pdf": _whole_file(_pdf_text),
    "text": _whole_file(_plain_text),
    "jsonl": _jsonl_records,
    "warc": _warc_records,
}
