"""SQL text handled before it reaches the engine: split a script into statements, refuse writes.

The engine runs one statement per call (Sail rejects ``SELECT 1; SELECT 2``) and runs DDL/DML
eagerly inside ``spark.sql``, so both checks must happen on the text. Quotes, backquoted
identifiers and comments are skipped, so ``WHERE reason = 'delete'`` is still read-only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# First keywords of statements that only read. EXPLAIN and DESCRIBE do not execute anything.
READ_ONLY_STARTS = frozenset({"SELECT", "WITH", "VALUES", "TABLE", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "("})
# Words that make a statement write even after a read-only start (``WITH t AS (...) INSERT ...``).
# REPLACE is left out: it is also a string function, and ``CREATE OR REPLACE`` is caught by CREATE.
WRITE_WORDS = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE", "CREATE", "DROP", "ALTER", "TRUNCATE", "OVERWRITE"})
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SqlTextError(ValueError):
    """Unterminated quote or comment, or a statement refused as a write."""


@dataclass(frozen=True)
class Statement:
    text: str
    words: tuple[str, ...]  # upper-cased keywords and identifiers outside quotes and comments, plus "("

    @property
    def first(self) -> str:
        return self.words[0] if self.words else ""

    def is_read_only(self) -> bool:
        return self.first in READ_ONLY_STARTS and not (WRITE_WORDS & set(self.words))


def _skip_quoted(text: str, i: int) -> int:
    """Index just past the quoted run starting at ``text[i]`` ('...', "..." or `...`)."""
    quote, j = text[i], i + 1
    while j < len(text):
        c = text[j]
        if c == "\\" and quote != "`":
            j += 2
            continue
        if c == quote:
            if text[j + 1 : j + 2] == quote:  # doubled quote inside the run
                j += 2
                continue
            return j + 1
        j += 1
    raise SqlTextError(f"unterminated {quote} starting at character {i + 1}")


def split_statements(script: str) -> list[Statement]:
    """Non-empty statements of ``script`` split on ``;`` outside quotes and comments."""
    out: list[Statement] = []
    start, i, words, n = 0, 0, [], len(script)

    def close(end: int) -> None:
        text = script[start:end].strip()
        if words:
            out.append(Statement(text, tuple(words)))

    while i < n:
        c = script[i]
        if c in "'\"`":
            i = _skip_quoted(script, i)
        elif script.startswith("--", i):
            nl = script.find("\n", i)
            i = n if nl < 0 else nl + 1
        elif script.startswith("/*", i):
            end = script.find("*/", i + 2)
            if end < 0:
                raise SqlTextError(f"unterminated /* comment starting at character {i + 1}")
            i = end + 2
        elif c == ";":
            close(i)
            start, i, words = i + 1, i + 1, []
        elif c == "(":
            words.append("(")
            i += 1
        elif m := _WORD.match(script, i):
            words.append(m.group(0).upper())
            i = m.end()
        else:
            i += 1
    close(n)
    return out


def check_read_only(statements: list[Statement]) -> None:
    for k, st in enumerate(statements, 1):
        if not st.is_read_only():
            found = sorted(WRITE_WORDS & set(st.words)) or [st.first]
            raise SqlTextError(
                f"statement {k} is not read-only ({', '.join(found)}): only SELECT, WITH, VALUES, TABLE, SHOW, "
                "DESCRIBE and EXPLAIN run by default; pass --allow-writes for DML/DDL"
            )
