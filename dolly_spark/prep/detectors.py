"""PII and secret detectors on one string: Presidio's pattern recognizers, detect-secrets' plugins.

Pure Python (no Spark): ``prep/pii.py`` runs :func:`find` inside a pandas UDF on the executors.
Presidio's pattern recognizers run without an NLP engine (no spaCy model can be installed here),
so they are called directly and context words are checked in a window before the match, as
Presidio's context enhancer does; a kind that needs context (US_SSN) is only reported with it.
With a spaCy model installed, Presidio's NER recognizer adds PERSON and LOCATION.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# In order of precedence when two matches overlap: checksummed and structured kinds before PHONE,
# which phonenumbers reads into many digit runs.
PII_KINDS = ("CREDIT_CARD", "IBAN", "US_SSN", "EMAIL", "IP_ADDRESS", "PHONE", "PERSON", "LOCATION")
# Found only with a spaCy NER model (``ner_model``): Presidio's SpacyRecognizer over its doc.ents.
NER_KINDS = ("PERSON", "LOCATION")
# spaCy's English pipelines, in the order ``ner: auto`` takes the first one installed.
ENGLISH_MODELS = ("en_core_web_lg", "en_core_web_trf", "en_core_web_md", "en_core_web_sm")
SECRET_KINDS = (
    "AWS_KEY",
    "PRIVATE_KEY",
    "GITHUB_TOKEN",
    "SLACK_TOKEN",
    "STRIPE_KEY",
    "JWT",
    "URL_CREDENTIALS",
    "KEYWORD_SECRET",
    "HIGH_ENTROPY",
)
# Kinds whose recognizer score alone is too weak: reported only with one of its context words
# among the CONTEXT_WORDS words before the match.
NEEDS_CONTEXT = frozenset({"US_SSN"})
CONTEXT_WORDS = 5
# A whole PEM block, not only its BEGIN line: the key material is what must not leak.
_PEM_BLOCK = re.compile(
    r"-----BEGIN[A-Z ]*PRIVATE KEY[A-Z ]*-----(?:.*?-----END[A-Z ]*PRIVATE KEY[A-Z ]*-----|.*)", re.S
)
# ``API_TOKEN=3f9a...``: a key, then an unquoted value (quoted ones are detect-secrets' own regex).
_UNQUOTED_ASSIGNMENT = re.compile(r"\b[A-Za-z_][\w.-]{0,40}\s*[:=]\s*([A-Za-z0-9+/_\-]{20,}={0,2})")
_MIN_ENTROPY_CHARS = 16
_WORD = re.compile(r"\w+")
# Digits a match of each kind holds at least (an email needs an "@" instead): a text with fewer is
# not given to that recognizer, which changes no finding and skips most of the work on prose.
MIN_DIGITS = {"PHONE": 7, "CREDIT_CARD": 12, "IBAN": 2, "IP_ADDRESS": 2, "US_SSN": 9}
# phonenumbers reads years and year ranges ("1642", "(1694-1766") as numbers of some region; a
# real number written as four digits, a dash and four more is missed too.
# What every IPv4 (a dotted quad) or IPv6 address ("x:y:", "::") holds; the IP regex is costly.
_IP_HINT = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:")
_JWT_TAIL = re.compile(r"[A-Za-z0-9_\-+/=]*")
_DIGIT_RUN = re.compile(r"[+(]?\d[\d \t().\-\u2013/]*\d\)?")
# A number with one decimal point ("62.75", "(0.307"): a phone's dots come in twos or more.
_DECIMAL = re.compile(r"[(\[]?\d*\.\d+[)\],;]?")
_YEAR_RANGE = re.compile(r"\(?\s*\d{4}(?:/\d)?\s*(?:[-\u2013/]\s*\d{2,4})?\s*\)?")

# A text no detector can match, decided by the engine's regex (Java on Spark, Rust on Sail):
# such a text never reaches the Python detectors. Each part is what some finding must contain:
#   @              EMAIL; URL_CREDENTIALS (``://user:pass@``)
#   digit run      PHONE, CREDIT_CARD, US_SSN: 7+ digits joined by the separators their
#                  patterns allow (the phone prefilter's runs, ``_DIGIT_RUN``)
#   IP hint        IP_ADDRESS (``_IP_HINT``)
#   2 letters + 2 digits   IBAN (its country code and check digits)
#   16+ token characters   AWS_KEY, GITHUB_TOKEN, STRIPE_KEY, HIGH_ENTROPY (detect-secrets'
#                  base64 charset, backslash included; entropy values are 16+ characters)
#   -----BEGIN, eyJ, xox, hooks.slack.com   PRIVATE_KEY, JWT, SLACK_TOKEN
#   keyword        KEYWORD_SECRET (detect-secrets' denylist, the keyword prefilter)
# Only without NER: names and places have no such marks. ``\p{Nd}`` is what Python's ``\d`` is.
# tests/test_pii.py shows each part but iban catching an example the others miss (an IBAN also
# holds a digit run in every format tried; the part guards letter-grouped ones).
GATE_PARTS = {
    "at": "@",
    "digit_run": "\\p{Nd}(?:[ \t().\\-\u2013/]*\\p{Nd}){6}",
    "ip": "\\p{Nd}{1,3}\\.\\p{Nd}{1,3}\\.\\p{Nd}{1,3}\\.\\p{Nd}{1,3}|[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:",
    "iban": "(?i:[a-z]{2}[0-9]{2})",
    "token_run": "[-A-Za-z0-9+/=_\\\\]{16,}",
    "markers": "-----BEGIN|eyJ|(?i:xox|hooks\\.slack\\.com)",
}


def scan_gate(parts: dict[str, str] | None = None) -> str:
    """One regex matching every text :func:`find` can report anything in (NER aside)."""
    from detect_secrets.plugins.keyword import DENYLIST

    parts = dict(GATE_PARTS if parts is None else parts)
    parts.setdefault("keyword", f"(?iu:{'|'.join(DENYLIST)})")
    return "|".join(f"(?:{p})" for p in parts.values())


INSTALL_HINT = (
    "pip install 'dolly-spark[governance]' (presidio-analyzer, detect-secrets), or turn the scan off with --no-pii-scan"
)


class DetectorsUnavailableError(RuntimeError):
    pass


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int


def check_available() -> None:
    """One line naming the install when a detector library is missing (raised before any write)."""
    # Found, not imported: presidio's import takes seconds, and only the executors scan.
    missing = [
        m.replace("_", "-") for m in ("presidio_analyzer", "detect_secrets") if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise DetectorsUnavailableError(f"the PII/secrets scan needs {', '.join(missing)}: {INSTALL_HINT}")


def installed_ner_model(ner: str) -> str | None:
    """The spaCy pipeline ``ner`` names: ``off`` -> None; ``auto`` -> the first installed of
    ENGLISH_MODELS, else None; a package name or a pipeline folder -> itself, when it is there.
    Never downloads: Presidio would, on an offline cluster."""
    if ner == "off":
        return None
    try:
        import spacy.util
    except ImportError:
        spacy = None
    if ner == "auto":
        return next((m for m in ENGLISH_MODELS if spacy and spacy.util.is_package(m)), None)
    if spacy is None or not (spacy.util.is_package(ner) or Path(ner).is_dir()):
        raise DetectorsUnavailableError(
            f"pii ner: spaCy model {ner!r} is not installed (pip install its wheel), or use ner: auto | off"
        )
    return ner


@lru_cache(maxsize=2)
def _ner(model: str):
    from presidio_analyzer.nlp_engine import SpacyNlpEngine
    from presidio_analyzer.predefined_recognizers import SpacyRecognizer

    engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": model}])
    engine.load()
    return engine, SpacyRecognizer(supported_entities=list(NER_KINDS))


def ner_findings(text: str, kinds: frozenset[str], model: str) -> list[Finding]:
    wanted = [k for k in NER_KINDS if k in kinds]
    if not wanted:
        return []
    engine, rec = _ner(model)
    return [Finding(r.entity_type, r.start, r.end) for r in rec.analyze(text, wanted, engine.process_text(text, "en"))]


def _offline_email_recognizer():
    """Presidio's email recognizer checks the TLD with tldextract, which downloads the public
    suffix list on first use; clusters often have no internet, so use its bundled snapshot."""
    import tldextract
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str):
            return bool(extract(pattern_text).suffix)

    return OfflineEmailRecognizer()


# Presidio's package imports its transformers NLP engine, which imports transformers and torch
# when installed (about 7 of its 9 s here) and falls back when they are not. The pattern
# recognizers need neither, so they are imported as if both were absent; later imports see both.
_NOT_NEEDED_BY_PATTERNS = ("transformers", "torch")


@contextlib.contextmanager
def _modules_absent(names: tuple[str, ...]):
    blocked = [n for n in names if n not in sys.modules]
    sys.modules.update(dict.fromkeys(blocked))  # None: ``import n`` raises ImportError
    try:
        yield
    finally:
        for n in blocked:
            if sys.modules.get(n, 0) is None:
                del sys.modules[n]


@lru_cache(maxsize=1)
def _pii_recognizers():
    with _modules_absent(_NOT_NEEDED_BY_PATTERNS):
        from presidio_analyzer import predefined_recognizers as pr

    return {
        "EMAIL": _offline_email_recognizer(),
        "PHONE": pr.PhoneRecognizer(),
        "CREDIT_CARD": pr.CreditCardRecognizer(),
        "IBAN": pr.IbanRecognizer(),
        "IP_ADDRESS": pr.IpRecognizer(),
        "US_SSN": pr.UsSsnRecognizer(),
    }


@lru_cache(maxsize=1)
def _secret_plugins():
    from detect_secrets.plugins.aws import AWSKeyDetector
    from detect_secrets.plugins.basic_auth import BasicAuthDetector
    from detect_secrets.plugins.github_token import GitHubTokenDetector
    from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString, HexHighEntropyString
    from detect_secrets.plugins.jwt import JwtTokenDetector
    from detect_secrets.plugins.keyword import KeywordDetector
    from detect_secrets.plugins.slack import SlackDetector
    from detect_secrets.plugins.stripe import StripeDetector

    regex_based = {
        "AWS_KEY": AWSKeyDetector(),
        "GITHUB_TOKEN": GitHubTokenDetector(),
        "SLACK_TOKEN": SlackDetector(),
        "STRIPE_KEY": StripeDetector(),
        "URL_CREDENTIALS": BasicAuthDetector(),
    }
    return regex_based, JwtTokenDetector(), KeywordDetector(), (Base64HighEntropyString(), HexHighEntropyString())


@lru_cache(maxsize=1)
def _secret_keywords() -> re.Pattern:
    from detect_secrets.plugins.keyword import DENYLIST

    return re.compile("|".join(DENYLIST), re.IGNORECASE)


def _has_context(text: str, start: int, words: list[str]) -> bool:
    before = [w.lower() for w in _WORD.findall(text[:start])][-CONTEXT_WORDS:]
    return any(any(c.strip() in w for c in words) for w in before)


def _digits(s: str) -> int:
    return sum(ch.isdigit() for ch in s)


def _plausible(kind: str, text: str, start: int, end: int) -> bool:
    """Drop the recognizers' known misses on prose: years, decimals and table figures read as
    phone numbers, ``::`` read as an IPv6 address."""
    match = text[start:end]
    if _digits(match) < MIN_DIGITS.get(kind, 0):
        return False
    if kind == "PHONE":
        glued = (
            (start > 0 and text[start - 1] in ".,")
            or text[end : end + 2][:1] == "."
            and text[end + 1 : end + 2].isdigit()
        )
        # Table columns of figures ("672.42 36.89 6", "60 50\u201355 2011") are not numbers either.
        figures = "\u2013" in match or any(_DECIMAL.fullmatch(tok) for tok in re.split(r"[\s\u2013-]+", match))
        return not glued and not figures and not _YEAR_RANGE.fullmatch(match)
    return True


def _phone_windows(text: str):
    """(start, end) of each run of digits and separators holding a phone's digits, one character
    wider on each side (phonenumbers looks at the characters around a candidate)."""
    for m in _DIGIT_RUN.finditer(text):
        if _digits(m.group()) >= MIN_DIGITS["PHONE"]:
            yield max(0, m.start() - 1), min(len(text), m.end() + 1)


def _matches(kind: str, rec, text: str, prefilter: bool) -> list[tuple[int, int]]:
    if kind != "PHONE" or not prefilter:
        return [(r.start, r.end) for r in rec.analyze(text, rec.supported_entities, None)]
    # phonenumbers scans the whole text and is most of the scan's cost: give it only the runs.
    return sorted({(a + s, a + e) for a, b in _phone_windows(text) for s, e in _phone_spans(text[a:b])})


@lru_cache(maxsize=1 << 16)
def _phone_spans(window: str) -> tuple[tuple[int, int], ...]:
    """phonenumbers' matches in one digit run: a function of the run alone, and runs recur
    (years, figures, the same number in many records), so each distinct run is parsed once."""
    rec = _pii_recognizers()["PHONE"]
    return tuple((r.start, r.end) for r in rec.analyze(window, ["PHONE_NUMBER"], None))


def pii_findings(text: str, kinds: frozenset[str], prefilter: bool = True) -> list[Finding]:
    """Presidio's pattern findings. ``prefilter`` (changes no finding: ``benchmarks/pii_scan.py``
    checks it on dolly-15k) skips a recognizer on a text too short of digits for its matches, the
    IP recognizer on a text with no dotted quad or colon pair, and runs the phone recognizer on
    digit runs only."""
    out = []
    digits, has_at = _digits(text), "@" in text
    for kind, rec in _pii_recognizers().items():
        skip = digits < MIN_DIGITS.get(kind, 0) or (kind == "EMAIL" and not has_at)
        skip = skip or (kind == "IP_ADDRESS" and not _IP_HINT.search(text))
        if kind not in kinds or (prefilter and skip):
            continue
        for start, end in _matches(kind, rec, text, prefilter):
            if kind in NEEDS_CONTEXT and not _has_context(text, start, rec.context):
                continue
            if _plausible(kind, text, start, end):
                out.append(Finding(kind, start, end))
    return out


def _spans_of(text: str, values) -> list[tuple[int, int]]:
    spans = []
    for v in set(values):
        if not v:
            continue
        i = text.find(v)
        while i >= 0:
            spans.append((i, i + len(v)))
            i = text.find(v, i + len(v))
    return spans


def _high_entropy(text: str, plugins) -> list[tuple[int, int]]:
    values = [v for p in plugins for v in p.analyze_string(text)]
    values += [m.group(1) for m in _UNQUOTED_ASSIGNMENT.finditer(text)]
    keep = [
        v
        for v in values
        if len(v) >= _MIN_ENTROPY_CHARS
        and any(p.calculate_shannon_entropy(v) > p.entropy_limit for p in plugins if set(v) <= set(p.charset))
    ]
    return _spans_of(text, keep)


def secret_findings(text: str, kinds: frozenset[str], prefilter: bool = True) -> list[Finding]:
    """detect-secrets' findings; ``prefilter`` skips the keyword plugin (many regexes per line)
    on a text holding none of its keywords, which every one of its patterns needs."""
    regex_based, jwt, keyword, entropy = _secret_plugins()
    out = (
        [Finding("PRIVATE_KEY", m.start(), m.end()) for m in _PEM_BLOCK.finditer(text)]
        if "PRIVATE_KEY" in kinds
        else []
    )
    for kind, plugin in regex_based.items():
        if kind in kinds:
            out += [Finding(kind, m.start(), m.end()) for rx in plugin.denylist for m in rx.finditer(text)]
    if "JWT" in kinds:
        # detect-secrets' JWT pattern ends lazily, before the signature: hide the whole token.
        spans = _spans_of(text, jwt.analyze_string(text))
        out += [Finding("JWT", s, _JWT_TAIL.match(text, e).end()) for s, e in spans]
    if "KEYWORD_SECRET" in kinds and (not prefilter or _secret_keywords().search(text)):
        values = [v for line in text.splitlines() for v in keyword.analyze_string(line)]
        out += [Finding("KEYWORD_SECRET", s, e) for s, e in _spans_of(text, values)]
    if "HIGH_ENTROPY" in kinds:
        out += [Finding("HIGH_ENTROPY", s, e) for s, e in _high_entropy(text, entropy)]
    return out


def resolve_overlaps(found: list[Finding]) -> list[Finding]:
    """One finding per stretch of text: secrets before PII, then by kind precedence
    (``PII_KINDS``), then the longer span, then the earlier."""
    rank = {k: i for i, k in enumerate(SECRET_KINDS + PII_KINDS)}
    kept: list[Finding] = []
    secret = frozenset(SECRET_KINDS)
    key = lambda f: (f.kind not in secret, 0 if f.kind in secret else rank[f.kind], -(f.end - f.start), f.start)
    for f in sorted(found, key=key):
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)


def find(text: str | None, kinds: frozenset[str], ner_model: str | None = None) -> list[Finding]:
    """Every PII and secret finding of ``kinds`` in ``text``, non-overlapping, in text order;
    names and places too when ``ner_model`` (a spaCy pipeline) is given."""
    if not text:
        return []
    ner = ner_findings(text, kinds, ner_model) if ner_model else []
    return resolve_overlaps(pii_findings(text, kinds) + secret_findings(text, kinds) + ner)


def redact(text: str, findings: list[Finding]) -> str:
    """Each finding replaced by its typed placeholder (``<EMAIL>``); ``findings`` must not overlap."""
    parts, pos = [], 0
    for f in sorted(findings, key=lambda f: f.start):
        parts += [text[pos : f.start], f"<{f.kind}>"]
        pos = f.end
    return "".join(parts) + text[pos:]
