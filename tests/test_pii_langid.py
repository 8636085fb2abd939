"""PII masking and language identification on crafted documents."""

from smolforge.tasks.curate.documents import Doc
from smolforge.tasks.curate.langid import identify_languages
from smolforge.tasks.curate.pii import mask_pii


def test_emails_and_public_ips_are_masked_private_ips_kept():
    docs = [
        Doc("a", "s", "Write to jane.doe@example-mail.org or ops+alerts@sub.company.co.uk today."),
        Doc("b", "s", "The server at 8.8.4.4 answered; the router at 192.168.1.1 did not."),
        Doc("c", "s", "Nothing personal in this sentence."),
    ]
    result, changed = mask_pii(docs)
    texts = [d.text for d in result.kept]
    assert changed == 2 and len(texts) == 3
    assert "jane.doe" not in texts[0] and "ops+alerts" not in texts[0] and texts[0].count("email@example.com") == 2
    assert "8.8.4.4" not in texts[1] and "192.168.1.1" in texts[1]
    assert texts[2] == "Nothing personal in this sentence."


def test_masking_can_be_turned_off_per_kind():
    result, changed = mask_pii([Doc("a", "s", "jane@mail.org at 8.8.8.8")], emails=False)
    assert result.kept[0].text.startswith("jane@mail.org") and "8.8.8.8" not in result.kept[0].text


def test_languages_kept_dropped_and_scored():
    docs = [
        Doc("en", "s", "The committee will meet next week to discuss the budget for the new library."),
        Doc("de", "s", "Der Ausschuss trifft sich nächste Woche, um den Haushalt der neuen Bibliothek zu besprechen."),
        Doc("nl", "s", "De commissie komt volgende week bijeen om de begroting van de nieuwe bibliotheek te bespreken."),
        Doc("xx", "s", "12 34 56 ### --- ..."),
    ]
    result = identify_languages(docs, keep=["en", "de", "fr"], threshold=0.65)
    kept = {d.id: (d.language, d.language_score) for d in result.kept}
    assert set(kept) == {"en", "de"} and kept["de"][0] == "de" and kept["en"][1] > 0.65
    reasons = {d.id: d.reason for d in result.dropped}
    assert reasons["nl"] == "language_not_kept"
    assert reasons["xx"] in ("language_low_score", "language_not_kept")
    assert next(d for d in result.dropped if d.id == "nl").detail.startswith("nl:")


def test_declared_language_skips_identification():
    result = identify_languages([Doc("a", "s", "Das ist deutsch.")], keep=["en"], threshold=0.65, declared="en")
    assert result.kept[0].language == "en" and result.kept[0].language_score == 1.0
