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
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Source name, used in ids and shard names.")
    kind: Literal["html", "pdf", "text", "jsonl", "warc"] = Field(description="How files are read.")
    path: str = Field(description="File, folder or glob; relative paths resolve against `curate.data_dir`.")
    language: str | None = Field(
        None, description="ISO 639-1 code if the source is known to be in one language: identification is skipped."
    )


class SampleCorpusConfig(Strict):
    scale: int = Field(1, ge=1, le=100, description="Multiplies the number of documents taken from each package.")


class ExtractConfig(Strict):
    max_chars: int = Field(1_000_000, gt=0, description="Documents longer than this (characters) are dropped as too_large.")
    min_chars: int = Field(20, ge=1, description="Extracted texts shorter than this (characters) are dropped.")
    ocr: bool = Field(True, description="Route PDFs without a text layer to OCR when the `ocr` extra is installed.")
    text_field: str = Field("text", description="Field holding the text in JSONL records.")
    files_per_shard: int = Field(16, ge=1, description="Files per unit of parallel work.")


class LanguageConfig(Strict):
    keep: list[str] = Field(default_factory=lambda: list(SMOLLM3_LANGUAGES), min_length=1, description="Languages kept (ISO 639-1).")
    threshold: float = Field(0.65, ge=0, le=1, description="Minimum fastText lid.176 score (FineWeb: 0.65).")


class GopherRepetitionConfig(Strict):
    """Gopher repetition rules (Rae et al. 2021, table A1); datatrove's defaults are FineWeb's."""

    dup_line_frac: float | None = Field(0.3, ge=0, le=1)
    dup_para_frac: float | None = Field(0.3, ge=0, le=1)
    dup_line_char_frac: float | None = Field(0.2, ge=0, le=1)
    dup_para_char_frac: float | None = Field(0.2, ge=0, le=1)


class GopherQualityConfig(Strict):
    min_doc_words: int | None = Field(50, ge=0)
    max_doc_words: int | None = Field(100_000, ge=1)
    min_avg_word_length: int | None = Field(3, ge=0)
    max_avg_word_length: int | None = Field(10, ge=1)
    max_symbol_word_ratio: float | None = Field(0.1, ge=0)
    max_bullet_lines_ratio: float | None = Field(0.9, ge=0, le=1)
    max_ellipsis_lines_ratio: float | None = Field(0.3, ge=0, le=1)
    max_non_alpha_words_ratio: float | None = Field(0.8, ge=0, le=1)
    min_stop_words: int | None = Field(2, ge=0)


class C4Config(Strict):
    """C4 line and document rules; FineWeb turns the terminal-punctuation line rule off."""

    filter_no_terminal_punct: bool = False
    min_num_sentences: int = Field(5, ge=0)
    min_words_per_line: int = Field(3, ge=0)
    max_word_length: int = Field(1000, ge=1)
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True


class FineWebRulesConfig(Strict):
    line_punct_thr: float = Field(0.12, ge=0, le=1, description="Min fraction of lines ending in punctuation.")
    short_line_thr: float = Field(0.67, ge=0, le=1, description="Max fraction of lines shorter than short_line_length.")
    short_line_length: int = Field(30, ge=1, description="Characters.")
    char_duplicates_ratio: float = Field(0.01, ge=0, le=1, description="Max fraction of characters in duplicated lines.")
    new_line_ratio: float = Field(0.3, ge=0, le=1, description="Max newlines per word.")


class QualityConfig(Strict):
    """Each rule set may be set to null to turn it off."""

    gopher_repetition: GopherRepetitionConfig | None = Field(default_factory=GopherRepetitionConfig)
    gopher_quality: GopherQualityConfig | None = Field(default_factory=GopherQualityConfig)
    c4: C4Config | None = Field(default_factory=C4Config)
    fineweb: FineWebRulesConfig | None = Field(default_factory=FineWebRulesConfig)


class PIIConfig(Strict):
    emails: bool = True
    ips: bool = True
    email_replacement: str = "email@example.com"
    ip_replacement: str = "0.0.0.0"


class DedupConfig(Strict):
    exact: bool = Field(True, description="Drop documents whose normalised text was already seen.")
    minhash: bool = Field(True, description="Drop MinHash near-duplicates (LSH over word n-grams).")
    ngram: int = Field(5, ge=1, description="Words per shingle (FineWeb: 5).")
    buckets: int = Field(14, ge=1, description="LSH bands (FineWeb: 14).")
    hashes_per_bucket: int = Field(8, ge=1, description="Hashes per band (FineWeb: 8).")
    against: list[str] = Field(
        default_factory=list,
        description="Earlier dedup indexes (artifact keys or folders) whose documents count as already seen.",
    )
    seed: int = 1


class TokenizerConfig(Strict):
    pretrained: str | None = Field(None, description="Use this tokenizer folder or hub id instead of training one.")
    vocab_size: int = Field(8192, ge=300, le=1_000_000, description="Target vocabulary of the trained byte-level BPE.")
    min_frequency: int = Field(2, ge=1)


class PackConfig(Strict):
    val_fraction: float = Field(0.05, ge=0, lt=1, description="Share of each source's documents held out.")
    seed: int = 0


class CurateConfig(Strict):
    sources: list[SourceConfig] = Field(min_length=1)
    data_dir: str | None = Field(None, description="Root for relative source paths (default: the sample corpus folder).")
    sample_corpus: SampleCorpusConfig | None = Field(
        None, description="Assemble the offline sample corpus into data_dir before curating."
    )
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    language: LanguageConfig = Field(default_factory=LanguageConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    pii: PIIConfig = Field(default_factory=PIIConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    pack: PackConfig = Field(default_factory=PackConfig)

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


