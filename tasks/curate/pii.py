"""PII masking of e-mail and IP addresses with datatrove's `PIIFormatter` (FineWeb's step).

Replacements are single fixed strings rather than datatrove's random pick among several, so the
same input always gives the same output and the step's artifact stays content-addressable.
Private and reserved IP ranges are left alone, as in FineWeb: they identify nobody.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

from smolforge.tasks.curate.config import PIIConfig
from smolforge.tasks.curate.documents import Doc, Step, StepResult

STEP = "pii"


@lru_cache(maxsize=8)
def _formatter(emails: bool, ips: bool, email_replacement: str, ip_replacement: str):
    from datatrove.pipeline.formatters import PIIFormatter

    return PIIFormatter(
        remove_emails=emails,
        remove_ips=ips,
        only_remove_public_ips=True,
        email_replacement=email_replacement,
        ip_replacement=ip_replacement,
    )


def mask_pii(
    docs: list[Doc], *, emails: bool = True, ips: bool = True, email_replacement: str = "email@example.com",
    ip_replacement: str = "0.0.0.0",
) -> tuple[StepResult, int]:
    """Mask in place; returns the documents (none are dropped) and how many were changed."""
    formatter = _formatter(emails, ips, email_replacement, ip_replacement)
    result, changed = StepResult(), 0
    for doc in docs:
        masked = formatter.format(doc.text)
        if masked != doc.text:
            changed += 1
            doc.text = masked
        result.kept.append(doc)
    return result, changed


@dataclass
class PIIStep(Step):
    """`mask_pii` with the configured replacements; counts the changed documents as `docs_masked`."""

    cfg: PIIConfig
    name: ClassVar[str] = STEP

    def run(self, docs: list[Doc]) -> StepResult:
        cfg = self.cfg
        result, changed = mask_pii(
            docs, emails=cfg.emails, ips=cfg.ips, email_replacement=cfg.email_replacement, ip_replacement=cfg.ip_replacement
        )
        result.counters["docs_masked"] = changed
        return result
