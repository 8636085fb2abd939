"""Curation's settings (FineWeb / FinePDFs style): the sources, and one section per step.

Thresholds default to FineWeb's; setting a rule set to null turns it off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from smolforge.strict import Strict, require_unique

SMOLLM3_LANGUAGES = ["en", "fr", "es", "de", "it", "pt"]


class SourceConfig(Strict):
    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Source name (lower case, digits, - and _), used in document ids and shard names."
    )
    kind: Literal["html", "pdf", "text", "jsonl", "warc"] = Field(
        description="How files are read: html, pdf, text (one document per file), jsonl (one per line), warc (one per HTML response)."
    )
    path: str = Field(description="File, folder or glob; relative paths resolve against `curate.data_dir`.")
    language: str | None = Field(
        None, description="ISO 639-1 code if the source is known to be in one language: identification is skipped."
    )


class SampleCorpusConfig(Strict):
    scale: int = Field(1, ge=1, le=100, description="Multiplies the number of documents taken from each package (1 is ~7 MB).")


class ExtractConfig(Strict):
    max_chars: int = Field(
        1_000_000, gt=0, description="Documents longer than this (characters) are dropped as too_large; inputs over 20x this (bytes) are not parsed."
    )
    min_chars: int = Field(20, ge=1, description="Extracted texts shorter than this (characters, once stripped) are dropped as empty_text.")
    ocr: bool = Field(True, description="Route PDFs without a text layer to OCR when the `ocr` extra is installed (else they are dropped as needs_ocr).")
    text_field: str = Field("text", description="Field holding the text in JSONL records.")
    files_per_shard: int = Field(16, ge=1, description="Input files per shard, the unit of parallel work and of caching (files).")


class LanguageConfig(Strict):
    keep: list[str] = Field(
        default_factory=lambda: list(SMOLLM3_LANGUAGES), min_length=1, description="Languages kept (ISO 639-1 codes)."
    )
    threshold: float = Field(0.65, ge=0, le=1, description="Minimum fastText lid.176 probability of the top language (0-1; FineWeb: 0.65).")


class GopherRepetitionConfig(Strict):
    """Gopher repetition rules (Rae et al. 2021, table A1); datatrove's defaults are FineWeb's. Null turns a rule off.
    The n-gram rules (top 2-4-grams, duplicated 5-10-grams) keep datatrove's thresholds."""

    dup_line_frac: float | None = Field(0.3, ge=0, le=1, description="Max share of lines that repeat an earlier line (fraction of lines).")
    dup_para_frac: float | None = Field(
        0.3, ge=0, le=1, description="Max share of paragraphs (blocks between blank lines) that repeat an earlier one (fraction of paragraphs)."
    )
    dup_line_char_frac: float | None = Field(
        0.2, ge=0, le=1, description="Max share of the document's characters in repeated lines (fraction of characters)."
    )
    dup_para_char_frac: float | None = Field(
        0.2, ge=0, le=1, description="Max share of the document's characters in repeated paragraphs (fraction of characters)."
    )


class GopherQualityConfig(Strict):
    """Gopher quality rules (Rae et al. 2021); words are the language's datatrove word tokens. Null turns a rule off."""

    min_doc_words: int | None = Field(50, ge=0, description="Min words that are not only punctuation (words).")
    max_doc_words: int | None = Field(100_000, ge=1, description="Max words that are not only punctuation (words).")
    min_avg_word_length: int | None = Field(3, ge=0, description="Min mean length of those words (characters).")
    max_avg_word_length: int | None = Field(10, ge=1, description="Max mean length of those words (characters).")
    max_symbol_word_ratio: float | None = Field(
        0.1, ge=0, description="Max '#' per word, and max ellipses ('...' or '…') per word (symbols per word)."
    )
    max_bullet_lines_ratio: float | None = Field(
        0.9, ge=0, le=1, description="Max share of lines starting with a bullet ('•' or '-') (fraction of lines)."
    )
    max_ellipsis_lines_ratio: float | None = Field(
        0.3, ge=0, le=1, description="Max share of lines ending with an ellipsis (fraction of lines)."
    )
    max_non_alpha_words_ratio: float | None = Field(
        0.8, ge=0, le=1, description="Despite the name (datatrove's): min share of words with a letter (fraction of words)."
    )
    min_stop_words: int | None = Field(
        2, ge=0, description="Min distinct stop words of the document's language present (words; the lists are in quality.py)."
    )


class C4Config(Strict):
    """C4 line and document rules, applied line by line; FineWeb turns the terminal-punctuation line rule off."""

    filter_no_terminal_punct: bool = Field(
        False, description="Remove lines not ending in . ? ! \" or ' (or ending in an ellipsis); FineWeb: off."
    )
    min_num_sentences: int = Field(5, ge=0, description="Drop documents with fewer sentences in their kept lines (sentences).")
    min_words_per_line: int = Field(3, ge=0, description="Remove lines with fewer whitespace-separated words (words).")
    max_word_length: int = Field(1000, ge=1, description="Remove lines holding a longer word (characters).")
    filter_lorem_ipsum: bool = Field(True, description="Drop documents with a kept line containing 'lorem ipsum'.")
    filter_javascript: bool = Field(True, description="Remove lines mentioning 'javascript'.")
    filter_curly_bracket: bool = Field(True, description="Drop documents with a kept line containing '{' (code).")
    filter_policy: bool = Field(True, description="Remove lines about terms of use, privacy or cookie policies.")


class FineWebRulesConfig(Strict):
    """FineWeb's own rules, on the non-empty lines of the text C4 left."""

    line_punct_thr: float = Field(0.12, ge=0, le=1, description="Min share of lines ending in terminal punctuation (fraction of lines).")
    short_line_thr: float = Field(
        0.67, ge=0, le=1, description="Max share of lines of at most short_line_length characters (fraction of lines)."
    )
    short_line_length: int = Field(30, ge=1, description="Length at or below which a line counts as short (characters).")
    char_duplicates_ratio: float = Field(
        0.01, ge=0, le=1, description="Max share of characters in lines that repeat an earlier line (fraction of non-newline characters)."
    )
    new_line_ratio: float = Field(0.3, ge=0, le=1, description="Max newlines per word (newlines per word).")


class QualityConfig(Strict):
    """Each rule set may be set to null to turn it off."""

    gopher_repetition: GopherRepetitionConfig | None = Field(
        default_factory=GopherRepetitionConfig, description="Gopher repetition rules (repeated lines, paragraphs, n-grams); null: off."
    )
    gopher_quality: GopherQualityConfig | None = Field(
        default_factory=GopherQualityConfig, description="Gopher quality rules (length, word length, symbols, bullets, stop words); null: off."
    )
    c4: C4Config | None = Field(default_factory=C4Config, description="C4 line and document rules (also removes bad lines); null: off.")
    fineweb: FineWebRulesConfig | None = Field(
        default_factory=FineWebRulesConfig, description="FineWeb's line punctuation, short line, duplicate and list rules; null: off."
    )


class PIIConfig(Strict):
    emails: bool = Field(True, description="Replace e-mail addresses.")
    ips: bool = Field(True, description="Replace public IPv4/IPv6 addresses (private and reserved ranges are kept).")
    email_replacement: str = Field("email@example.com", description="Text every e-mail address is replaced with.")
    ip_replacement: str = Field("0.0.0.0", description="Text every public IP address is replaced with.")


class DedupConfig(Strict):
    exact: bool = Field(True, description="Drop documents whose normalised text was already seen.")
    minhash: bool = Field(True, description="Drop MinHash near-duplicates (LSH over word n-grams).")
    ngram: int = Field(5, ge=1, description="Words per shingle (words; FineWeb: 5).")
    buckets: int = Field(14, ge=1, description="LSH bands (bands; FineWeb: 14).")
    hashes_per_bucket: int = Field(8, ge=1, description="Min-hashes per band (hashes; FineWeb: 8).")
    against: list[str] = Field(
        default_factory=list,
        description="Earlier dedup indexes (artifact keys or folders) whose documents count as already seen.",
    )
    seed: int = Field(1, description="Seed of the min-hash permutations (the same seed gives datatrove's hashes).")


class TokenizerConfig(Strict):
    pretrained: str | None = Field(None, description="Use this tokenizer folder or hub id instead of training one.")
    vocab_size: int = Field(8192, ge=300, le=1_000_000, description="Target vocabulary of the trained byte-level BPE (tokens).")
    min_frequency: int = Field(2, ge=1, description="Min occurrences of a pair in the corpus for a BPE merge (occurrences).")


class PackConfig(Strict):
    val_fraction: float = Field(0.05, ge=0, lt=1, description="Share of each source's documents held out for validation (fraction).")
    seed: int = Field(0, description="Seed of the draw of validation documents.")


class DatasetConfig(Strict):
    """The curated documents as a Parquet dataset in the corpus (`dataset/`), for people and other tools."""

    max_file_mb: int = Field(
        256, ge=1, description="A Parquet file takes rows until this much data is written into it (MB, before compression), then the next file starts."
    )
    row_group_mb: int = Field(
        32, ge=1, description="Rows per row group up to this size (MB, before compression): the unit a streaming reader fetches."
    )


class CurateConfig(Strict):
    sources: list[SourceConfig] = Field(min_length=1, description="The inputs: one entry per source (name, kind, path, language).")
    data_dir: str | None = Field(None, description="Root for relative source paths (default: the sample corpus folder).")
    sample_corpus: SampleCorpusConfig | None = Field(
        None, description="Assemble the offline sample corpus into data_dir before curating."
    )
    extract: ExtractConfig = Field(default_factory=ExtractConfig, description="Reading and text extraction.")
    language: LanguageConfig = Field(default_factory=LanguageConfig, description="Language identification.")
    quality: QualityConfig = Field(default_factory=QualityConfig, description="Quality rule sets (FineWeb's).")
    pii: PIIConfig = Field(default_factory=PIIConfig, description="Masking of personal data.")
    dedup: DedupConfig = Field(default_factory=DedupConfig, description="Exact and MinHash deduplication.")
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig, description="The tokenizer trained on (or adopted for) the curated text.")
    pack: PackConfig = Field(default_factory=PackConfig, description="Token shards and the validation split.")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig, description="The curated documents as Parquet files with a dataset card.")

    def data_folder(self, home: Path) -> Path:
        """Where relative source paths resolve: `data_dir`, else the sample corpus in the project folder."""
        if self.data_dir:
            return Path(self.data_dir).expanduser().resolve()
        return home / f"sample-corpus-{self.sample_corpus.scale if self.sample_corpus else 1}"

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        require_unique([s.name for s in sources], "source names")
        return sources


