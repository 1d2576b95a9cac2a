"""The PII and secrets scan: each detector kind, each policy, and planted values end to end."""

import importlib.util
import json
import subprocess
import sys

import deltalake
import pytest
import regex
from pyspark.testing import assertDataFrameEqual

from dolly_spark.prep import detectors
from dolly_spark.prep.pii import PiiConfig, findings_rows, scan_fields, scan_text
from dolly_spark.prep.prepare import PrepareConfig, run

# Fake secrets, cut in two so that this file holds no token-like string of its own
# (tests/reliability/test_security.py scans the repository for them).
AWS_ID, AWS_SECRET = "AKIA" + "IOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
PEM_BEGIN, PEM_END = "-----BEGIN RSA " + "PRIVATE KEY-----", "-----END RSA " + "PRIVATE KEY-----"
GITHUB = "ghp" + "_abcdefghijklmnopqrstuvwxyz0123456789"
JWT = (
    "ey"
    + "JhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
    + "ey"
    + "JzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
)
KEY_BODY = "MIIEpAIBAAKCAQEA7bqXk1Zr9vQ2mJ8nT5wLhYc3dFgR0pKs"
PRIVATE_KEY = f"{PEM_BEGIN}\n{KEY_BODY}\n{PEM_END}"
CARD, IBAN, EMAIL = "4111 1111 1111 1111", "GB82 WEST 1234 5698 7654 32", "jane.doe@example.org"
PHONE, SSN = "+1 415-555-0132", "536-22-8741"
# Every planted value, and pieces of the multi-part ones, that must not pass silver.
PLANTED = (AWS_ID, AWS_SECRET, KEY_BODY, CARD, IBAN, EMAIL, PHONE, SSN)

EXAMPLES = {
    "EMAIL": (f"write to {EMAIL} today", EMAIL),
    "PHONE": (f"call me on {PHONE} please", PHONE),
    "CREDIT_CARD": (f"my card {CARD} expires soon", CARD),
    "IBAN": (f"pay to {IBAN} by Friday", IBAN),
    "IP_ADDRESS": ("the server at 192.168.10.42 is down", "192.168.10.42"),
    "US_SSN": (f"his social security number is {SSN}.", SSN),
    "AWS_KEY": (f"aws_access_key_id = {AWS_ID}", AWS_ID),
    "PRIVATE_KEY": (f"here it is:\n{PRIVATE_KEY}\nthanks", PRIVATE_KEY),
    "GITHUB_TOKEN": (f"token {GITHUB} ok", GITHUB),
    "SLACK_TOKEN": ("use " + "xox" + "b-123456789012-1234567890123-abcdefghijklmnopqrstuvwx", None),
    "STRIPE_KEY": ("key sk_live_4eC39HqLyjWDarjtT1zdp7dc here", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
    "URL_CREDENTIALS": ("connect to https://admin:hunter2pass@db.example.com/x", None),
    "KEYWORD_SECRET": ("password = 'S3cr3tP@ssw0rd!'", "S3cr3tP@ssw0rd!"),
    "HIGH_ENTROPY": ("API_TOKEN=3f9aK2mQ8zR7xL1vB6nC4wE0tY5uI9oP", "3f9aK2mQ8zR7xL1vB6nC4wE0tY5uI9oP"),
    "JWT": (
        f"auth {JWT} ok",
        JWT,
    ),
}
ALL_KINDS = frozenset(detectors.PII_KINDS + detectors.SECRET_KINDS)


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_each_kind_is_found_with_its_span(kind):
    text, value = EXAMPLES[kind]
    found = detectors.find(text, ALL_KINDS)
    assert [f.kind for f in found] == [kind], found
    if value is not None:
        assert text[found[0].start : found[0].end] == value


@pytest.mark.parametrize(
    "text",
    [
        "The ship was launched in 1642 and sank (1694–1766).",  # years are not phone numbers
        "It took 4.0210395 secs, then 0.4407322 secs (0.307–0.588 AU).",  # nor are decimals
        f"The number {SSN} was printed on the page.",  # an SSN pattern without its context words
        "Split it on the :: delimiter.",  # not an IPv6 address
        "Bank 672.42 36.89 6,370\nChina 60 50–55 2011\nCroatia 65 62.75 2021",  # nor are table figures
        "My password is long and the secret is kept.",  # keywords without a value
    ],
)
def test_prose_that_looks_like_pii_is_not_reported(text):
    assert detectors.find(text, ALL_KINDS) == []


def test_the_prefilter_changes_no_finding():
    texts = [t for t, _ in EXAMPLES.values()] + ["call 415.555.0132 or 01.23.45.67.89", "ip fe80::1 and 10.0.0.1"]
    for text in texts + [" ".join(texts)]:
        with_prefilter = detectors.pii_findings(text, ALL_KINDS) + detectors.secret_findings(text, ALL_KINDS)
        without = detectors.pii_findings(text, ALL_KINDS, False) + detectors.secret_findings(text, ALL_KINDS, False)
        assert sorted(with_prefilter, key=str) == sorted(without, key=str), text


# Per gate part, a text with a finding that no other part of the gate matches.
GATE_ONLY = {
    "at": EXAMPLES["EMAIL"][0],
    "digit_run": EXAMPLES["PHONE"][0],
    "ip": "the address 2001:0db8:0000:0000:0000:0000:0000:0001 is local",
    "token_run": EXAMPLES["AWS_KEY"][0],
    "markers": f"key:\n{PEM_BEGIN}\nshort\n{PEM_END}",
    "keyword": "password = 'hunter2pass'",
}


def _gate_without(part: str) -> str:
    parts = dict(detectors.GATE_PARTS)
    if part == "keyword":
        parts["keyword"] = "(?!)"  # matches nothing: the gate without its keyword part
    else:
        del parts[part]
    return detectors.scan_gate(parts)


@pytest.mark.parametrize("part", sorted(GATE_ONLY))
def test_each_scan_gate_part_lets_through_a_finding_the_others_miss(part):
    text = GATE_ONLY[part]
    assert detectors.find(text, ALL_KINDS)
    assert regex.search(detectors.scan_gate(), text)
    assert not regex.search(_gate_without(part), text), "another part matches: the example shows nothing"


def test_the_scan_gate_runs_on_the_engine_and_passes_every_finding(spark):
    texts = [t for t, _ in EXAMPLES.values()] + list(GATE_ONLY.values())
    prose = ["It is a small, quiet town of 4,000.", "Call me on Friday, in 2 weeks."]
    assert all(detectors.find(t, ALL_KINDS) for t in texts)
    df = spark.createDataFrame([(t,) for t in texts + prose], "text string")
    passed = {r["text"] for r in df.where(df.text.rlike(detectors.scan_gate())).collect()}
    assert passed == set(texts)
    # The gate with a part missing lets a finding through unscanned: the engine sees it too.
    broken = df.where(df.text.rlike(_gate_without("at"))).collect()
    assert GATE_ONLY["at"] not in {r["text"] for r in broken}


def test_an_unfinished_private_key_block_is_hidden_to_the_end():
    text = "start\n-----BEGIN OPENSSH " + f"PRIVATE KEY-----\n{KEY_BODY}\n"
    (f,) = detectors.find(text, ALL_KINDS)
    assert (f.kind, text[f.start :].strip()) == ("PRIVATE_KEY", text[text.index("-----") :].strip())


def test_overlapping_findings_keep_the_secret_then_the_specific_kind():
    F = detectors.Finding
    found = [
        F("PHONE", 0, 10),
        F("AWS_KEY", 5, 25),
        F("PHONE", 30, 44),
        F("IP_ADDRESS", 32, 40),
        F("IP_ADDRESS", 41, 43),
    ]
    got = detectors.resolve_overlaps(found)
    assert got == [F("AWS_KEY", 5, 25), F("IP_ADDRESS", 32, 40), F("IP_ADDRESS", 41, 43)]


def test_actions_default_by_group_and_override_by_group_then_kind():
    acts = PiiConfig().action_by_kind()
    assert {acts[k] for k in detectors.PII_KINDS} == {"redact"}
    assert {acts[k] for k in detectors.SECRET_KINDS} == {"quarantine"}
    acts = PiiConfig(actions=("email=keep", "secrets=redact", "pii=quarantine")).action_by_kind()
    assert acts["EMAIL"] == "keep" and acts["PHONE"] == "quarantine" and acts["AWS_KEY"] == "redact"


@pytest.mark.parametrize(
    "entry, message",
    [("EMAIL", "expected KIND=ACTION"), ("EMAIL=drop", "expected KIND=ACTION"), ("NAME=keep", "unknown kind 'NAME'")],
)
def test_bad_action_entries_fail_in_one_line(entry, message):
    with pytest.raises(ValueError, match=message) as e:
        PiiConfig(actions=(entry,))
    assert "\n" not in str(e.value)


def test_each_policy_on_one_text():
    text = f"mail {EMAIL} or key {AWS_ID}"
    acts = PiiConfig().action_by_kind()
    out = scan_text(text, "response", acts)
    assert out["text"] == "mail <EMAIL> or key <AWS_KEY>" and out["reason"] == "secret:aws_key"
    assert [(f["kind"], f["action"]) for f in out["findings"]] == [("EMAIL", "redact"), ("AWS_KEY", "quarantine")]
    kept = scan_text(text, "response", {**acts, "EMAIL": "keep", "AWS_KEY": "keep"})
    assert kept["text"] == text and kept["reason"] is None and len(kept["findings"]) == 2
    assert scan_text(text, "response", {**acts, "EMAIL": "quarantine", "AWS_KEY": "redact"})["reason"] == "pii:email"


def test_scan_fields_on_a_small_frame(spark):
    df = spark.createDataFrame(
        [
            ("r1", "s", "who is it", "", f"mail {EMAIL}"),
            ("r2", "s", f"key {AWS_ID}", "", "ok"),
            ("r3", "s", "hi", "", "yo"),
        ],
        "record_id string, source string, instruction string, context string, response string",
    )
    scanned = scan_fields(df, PiiConfig())
    expected = spark.createDataFrame(
        [
            ("r1", "who is it", "mail <EMAIL>", None),
            ("r2", "key <AWS_KEY>", "ok", "secret:aws_key"),
            ("r3", "hi", "yo", None),
        ],
        "record_id string, instruction string, response string, pii_reason string",
    )
    assertDataFrameEqual(scanned.select("record_id", "instruction", "response", "pii_reason"), expected)
    found = spark.createDataFrame(
        [
            ("r1", "s", "response", "EMAIL", 5, 5 + len(EMAIL), "redact"),
            ("r2", "s", "instruction", "AWS_KEY", 4, 24, "quarantine"),
        ],
        "record_id string, source string, field string, kind string, start int, end int, action string",
    )
    assertDataFrameEqual(findings_rows(scanned), found)


# --- end to end: planted values never pass silver ---------------------------------------------------


def _planted_input(tmp_path):
    rec = lambda i, r, c="": {"instruction": f"Question {i}?", "context": c, "response": r, "category": "open_qa"}  # noqa: E731
    records = [
        rec(1, f"Write to {EMAIL} or call {PHONE} any time."),
        rec(2, "Use these credentials.", f"aws_access_key_id = {AWS_ID}\naws_secret_access_key = {AWS_SECRET}"),
        rec(3, f"The deploy key:\n{PRIVATE_KEY}"),
        rec(4, f"Charge the card {CARD} for the order."),
        rec(5, f"Send the refund to IBAN {IBAN} please."),
        rec(6, f"For the form: my social security number is {SSN}, thanks."),
        rec(7, "The capital of France is Paris."),
    ]
    lines = [json.dumps(r) + "\n" for r in records]
    lines.append('{"instruction": "broken", "response": "mail ' + EMAIL + '"\n')  # malformed: quarantined whole
    src = tmp_path / "planted.jsonl"
    src.write_text("".join(lines))
    return src


def _leaks(root, skip=("bronze",)) -> list[str]:
    """``table: value`` for each planted value found in any cell of any table but ``skip``."""
    out = []
    for table in sorted((root / "tables").iterdir()):
        if table.name in skip:
            continue
        text = json.dumps(deltalake.DeltaTable(str(table)).to_pyarrow_table().to_pylist(), default=str)
        text = text.encode().decode("unicode_escape")  # \n in the private key, as stored
        out += [f"{table.name}: {v}" for v in PLANTED if v in text]
    return out


def test_planted_pii_and_secrets_never_pass_silver(spark, tmp_path):
    root = tmp_path / "out"
    result = run(PrepareConfig(input=str(_planted_input(tmp_path)), output_root=str(root)), spark)
    assert _leaks(root) == []
    assert len(_leaks(root, skip=())) == len(PLANTED), "bronze keeps the raw text"

    q = deltalake.DeltaTable(str(root / "tables" / "quarantine")).to_pyarrow_table().to_pylist()
    reasons = {r["reason"] for r in q}
    assert {"secret:aws_key", "secret:private_key", "malformed_json"} <= reasons
    malformed = next(r for r in q if r["reason"] == "malformed_json")
    assert "<EMAIL>" in malformed["raw_line"]
    silver = " ".join(deltalake.DeltaTable(str(root / "tables" / "silver")).to_pyarrow_table()["response"].to_pylist())
    for tag in ("<EMAIL>", "<PHONE>", "<CREDIT_CARD>", "<IBAN>", "<US_SSN>"):
        assert tag in silver, tag
    findings = deltalake.DeltaTable(str(root / "tables" / "pii_findings")).to_pyarrow_table()
    assert findings.column_names == ["record_id", "source", "field", "kind", "start", "end", "action"]
    pii = result.details["pii"]
    # The unquoted AWS secret key is not detect-secrets' AWS pattern (it wants quotes): high entropy.
    kinds = {"EMAIL": 2, "PHONE": 1, "AWS_KEY": 1, "HIGH_ENTROPY": 1, "PRIVATE_KEY": 1, "CREDIT_CARD": 1, "IBAN": 1}
    assert pii["by_kind"] == {**kinds, "US_SSN": 1}
    assert pii["by_field"] == {"response": 6, "context": 2, "raw_line": 1}
    assert pii["by_action"] == {"redact": 6, "quarantine": 3} and pii["records"] == 7
    acct = result.details["accounting"]
    assert acct["raw"] == 8 == acct["gold"] + acct["quarantine"] + acct["duplicates"]


def test_the_leak_check_fails_when_the_scan_is_off(spark, tmp_path):
    root = tmp_path / "out"
    run(PrepareConfig(input=str(_planted_input(tmp_path)), output_root=str(root), pii=PiiConfig(scan=False)), spark)
    leaked = {line.split(": ", 1)[1] for line in _leaks(root)}
    assert leaked == set(PLANTED)


def test_missing_detector_library_fails_in_one_line_before_any_write(spark, tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "presidio_analyzer" else real_find_spec(name, *a)
    )
    root = tmp_path / "out"
    with pytest.raises(detectors.DetectorsUnavailableError, match=r"needs presidio-analyzer: pip install") as e:
        run(PrepareConfig(input=str(_planted_input(tmp_path)), output_root=str(root)), spark)
    assert "\n" not in str(e.value) and "--no-pii-scan" in str(e.value)
    assert not (root / "tables").exists()


class _RecordingSpark:
    def __init__(self):
        self.statements = []

    def sql(self, statement):
        self.statements.append(statement)


def test_bronze_raw_text_columns_get_unity_catalog_tags_and_local_tables_none():
    from dolly_spark.ops import tables
    from dolly_spark.prep.stages import RAW_TEXT_TAGS

    spark = _RecordingSpark()
    tables.tag_columns(spark, tables.TableNames(catalog="main", schema="dolly").bronze, {"response": RAW_TEXT_TAGS})
    assert spark.statements == [
        "ALTER TABLE `main`.`dolly`.`bronze` ALTER COLUMN `response` SET TAGS ('pii' = 'unscanned', 'data_class' = 'raw_text')"
    ]
    tables.tag_columns(spark, tables.TableNames(root="/tmp/x").bronze, {"response": RAW_TEXT_TAGS})
    assert len(spark.statements) == 1


# --- NER: only with a spaCy model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ruler_model(tmp_path_factory):
    """A spaCy pipeline whose NER is a rule list: Presidio's NER path without a downloaded model."""
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("entity_ruler").add_patterns(
        [{"label": "PERSON", "pattern": "Jane Doe"}, {"label": "GPE", "pattern": "Lisbon"}]
    )
    path = tmp_path_factory.mktemp("ner") / "ruler"
    nlp.to_disk(path)
    return str(path)


def test_ner_auto_takes_an_installed_english_model_and_is_off_without_one(monkeypatch):
    import spacy.util

    monkeypatch.setattr(spacy.util, "is_package", lambda name: False)
    assert detectors.installed_ner_model("auto") is None and detectors.installed_ner_model("off") is None
    monkeypatch.setattr(spacy.util, "is_package", lambda name: name == "en_core_web_md")
    assert detectors.installed_ner_model("auto") == "en_core_web_md"


def test_a_named_ner_model_that_is_not_installed_fails_in_one_line():
    with pytest.raises(detectors.DetectorsUnavailableError, match="spaCy model 'en_core_web_xl' is not installed"):
        PiiConfig(ner="en_core_web_xl").check()


def test_names_and_places_are_found_with_a_ner_model_only(spark, ruler_model):
    text = "Jane Doe moved to Lisbon; mail jane.doe@example.org"
    assert [f.kind for f in detectors.find(text, ALL_KINDS)] == ["EMAIL"]
    found = detectors.find(text, ALL_KINDS, ruler_model)
    assert [(f.kind, text[f.start : f.end]) for f in found] == [
        ("PERSON", "Jane Doe"),
        ("LOCATION", "Lisbon"),
        ("EMAIL", "jane.doe@example.org"),
    ]
    df = spark.createDataFrame([("r1", "s", text)], "record_id string, source string, response string")
    out = scan_fields(df, PiiConfig(ner=ruler_model), ("response",)).first()
    assert out["response"] == "<PERSON> moved to <LOCATION>; mail <EMAIL>"


def test_quarantined_input_lines_get_the_same_detectors_ner_included(spark, ruler_model):
    from dolly_spark.prep.pii import redact_raw_lines

    df = spark.createDataFrame(
        [("r1", "s", f"Jane Doe wrote {EMAIL}")], "record_id string, source string, raw_line string"
    )
    out = redact_raw_lines(df, PiiConfig(ner=ruler_model, actions=("EMAIL=quarantine",))).first()
    assert out["raw_line"] == "<PERSON> wrote <EMAIL>" and out["pii_reason"] is None


def test_the_pattern_scan_does_not_import_torch_and_leaves_it_importable():
    # Presidio would import transformers and torch (seconds per worker) for an engine we never use.
    code = (
        "import sys\n"
        "from dolly_spark.prep import detectors\n"
        f"assert detectors.find({EXAMPLES['EMAIL'][0]!r}, frozenset(detectors.PII_KINDS))\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
        "import torch, transformers\n"
        "print('importable')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["[]", "importable"]
