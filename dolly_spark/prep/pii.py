"""Silver's PII and secrets scan: a finding per match, and a policy per kind.

``redact`` replaces the match with a typed placeholder (``<EMAIL>``, the default for PII),
``quarantine`` sends the record to quarantine with reason ``secret:<kind>`` or ``pii:<kind>``
(the default for secrets), ``keep`` leaves the text and only records the finding. It runs after
validation and before dedup, so redacted copies still deduplicate. The detectors are in
``prep/detectors.py``; here they run in a pandas UDF on the executors. Offsets are those of the
cleaned silver text before redaction; the findings never hold the matched value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf

from dolly_spark.prep import detectors
from dolly_spark.prep.clean import TEXT_FIELDS

ACTIONS = ("redact", "quarantine", "keep")
GROUPS = {"pii": detectors.PII_KINDS, "secrets": detectors.SECRET_KINDS}
GROUP_DEFAULTS = {"pii": "redact", "secrets": "quarantine"}
FINDING = "struct<field:string,kind:string,start:int,end:int,action:string>"
FINDINGS_COLUMNS = ("record_id", "source", "field", "kind", "start", "end", "action")


@dataclass(frozen=True)
class PiiConfig:
    scan: bool = field(default=True, metadata={"help": "find PII and secrets in silver text (--no-pii-scan: skip)"})
    actions: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "KIND=ACTION (redact | quarantine | keep); KIND is a kind (EMAIL, AWS_KEY, ...) or pii / "
            "secrets for a whole group; defaults pii=redact secrets=quarantine"
        },
    )

    # Off by default: the same run must give the same silver whatever a cluster has installed, and
    # NER redacts every name, public figures in encyclopedic text included.
    ner: str = field(
        default="off",
        metadata={
            "help": "spaCy NER for PERSON and LOCATION: off (patterns only) | auto (an installed en_core_web_* "
            "model, else patterns only) | a model package or pipeline folder"
        },
    )

    def __post_init__(self):
        self.action_by_kind()  # a bad entry fails when the config is built, before any write

    def action_by_kind(self) -> dict[str, str]:
        """Every kind -> its action: the group default, then group entries, then kind entries."""
        out = {k: GROUP_DEFAULTS[g] for g, kinds in GROUPS.items() for k in kinds}
        entries = [self._parse(e) for e in self.actions]
        for key, action in sorted(entries, key=lambda e: e[0] not in GROUPS):
            for kind in GROUPS.get(key, (key,)):
                out[kind] = action
        return out

    @staticmethod
    def _parse(entry: str) -> tuple[str, str]:
        key, sep, action = (s.strip() for s in str(entry).partition("="))
        kinds = detectors.PII_KINDS + detectors.SECRET_KINDS
        if not sep or action not in ACTIONS:
            raise ValueError(f"pii actions: expected KIND=ACTION with ACTION one of {'|'.join(ACTIONS)}, got {entry!r}")
        if key not in GROUPS and key.upper() not in kinds:
            raise ValueError(f"pii actions: unknown kind {key!r}; kinds: pii, secrets, {', '.join(kinds)}")
        return (key if key in GROUPS else key.upper()), action

    def check(self) -> None:
        if self.scan:
            detectors.check_available()
            detectors.installed_ner_model(self.ner)

    def ner_model(self) -> str | None:
        return detectors.installed_ner_model(self.ner) if self.scan else None


def reason_of(kind: str) -> str:
    return f"{'secret' if kind in detectors.SECRET_KINDS else 'pii'}:{kind.lower()}"


def scan_text(text: str | None, field_name: str, actions: dict[str, str], ner_model: str | None = None) -> dict:
    """The text with its redact / quarantine findings replaced, every finding, and the record's
    quarantine reason (its first quarantine finding) or None."""
    found = detectors.find(text, frozenset(actions), ner_model)
    hidden = [f for f in found if actions[f.kind] != "keep"]
    findings = [
        {"field": field_name, "kind": f.kind, "start": f.start, "end": f.end, "action": actions[f.kind]} for f in found
    ]
    first = next((f for f in found if actions[f.kind] == "quarantine"), None)
    return {
        "text": detectors.redact(text, hidden) if hidden else text,
        "findings": findings,
        "reason": reason_of(first.kind) if first else None,
    }


def _scan_udf(field_name: str, actions: dict[str, str], ner_model: str | None):
    @pandas_udf(f"struct<text:string,findings:array<{FINDING}>,reason:string>")
    def scan(texts: pd.Series) -> pd.DataFrame:
        rows = [scan_text(t, field_name, actions, ner_model) for t in texts]
        return pd.DataFrame(rows, columns=["text", "findings", "reason"])

    return scan


def scan_fields(df: DataFrame, cfg: PiiConfig, fields: tuple[str, ...] = TEXT_FIELDS) -> DataFrame:
    """``fields`` redacted as the policy says, plus ``pii_findings`` (every finding of the row)
    and ``pii_reason`` (why the row goes to quarantine, or null)."""
    if not cfg.scan:
        empty = F.array().cast(f"array<{FINDING}>")
        return df.withColumn("pii_findings", empty).withColumn("pii_reason", F.lit(None).cast("string"))
    actions, ner_model = cfg.action_by_kind(), cfg.ner_model()  # resolved on the driver
    # Texts the gate rules out reach the UDF as nulls (nothing to convert, nothing to scan) and keep
    # their text: most of a corpus, so the scan costs a fraction of a pass over every text.
    gate = None if ner_model else detectors.scan_gate()
    tmp = {c: f"_pii_{c}" for c in fields}
    for c in fields:
        text = F.col(c) if gate is None else F.when(F.col(c).rlike(gate), F.col(c))
        df = df.withColumn(tmp[c], _scan_udf(c, actions, ner_model)(text))
    return (
        df.withColumns({c: F.coalesce(F.col(tmp[c])["text"], F.col(c)) for c in fields})
        .withColumn("pii_findings", F.concat(*[F.col(tmp[c])["findings"] for c in fields]))
        .withColumn("pii_reason", F.coalesce(*[F.col(tmp[c])["reason"] for c in fields], F.lit(None).cast("string")))
        .drop(*tmp.values())
    )


def redact_raw_lines(rejects: DataFrame, cfg: PiiConfig) -> DataFrame:
    """Quarantined rows keep their input line for debugging: with every finding not kept redacted
    (the row is in quarantine already, so a quarantine policy redacts here too)."""
    if not cfg.scan:
        return scan_fields(rejects, cfg, ())
    actions = tuple(f"{k}={'keep' if a == 'keep' else 'redact'}" for k, a in cfg.action_by_kind().items())
    forced = dataclasses.replace(cfg, actions=actions)  # the same detectors (NER too), redacting
    return scan_fields(rejects, forced, ("raw_line",)).withColumn("pii_reason", F.lit(None).cast("string"))


def findings_rows(scanned: DataFrame) -> DataFrame:
    """One row per finding: where it is and what was done, never the matched value."""
    exploded = scanned.select("record_id", "source", F.explode("pii_findings").alias("f"))
    return exploded.select("record_id", "source", *[F.col("f")[c].alias(c) for c in FINDINGS_COLUMNS[2:]])


def findings_summary(findings: DataFrame) -> dict:
    """Counts by kind, by field and by action, and how many records had a finding."""
    rows = findings.groupBy("kind", "field", "action").agg(F.count("*").alias("n")).collect()
    out: dict = {"by_kind": {}, "by_field": {}, "by_action": {}}
    for r in rows:
        for key, col in (("by_kind", "kind"), ("by_field", "field"), ("by_action", "action")):
            out[key][r[col]] = out[key].get(r[col], 0) + int(r["n"])
    out["findings"] = sum(out["by_kind"].values())
    out["records"] = findings.select("record_id").distinct().count() if rows else 0
    return out
