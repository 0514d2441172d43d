"""The SQL text of dispatch triggers: identifiers, a small PostgreSQL lexer, ``when`` text.

Identifiers (trigger, table, schema, column names) are checked against PostgreSQL's
limits; the side-effect function name is parsed like ``parse_ident`` and re-quoted
canonically; ``when`` text is checked to be one self-contained SQL expression (closed
quotes, balanced parentheses, no ``;``, no comments) so that it cannot leave its
``WHEN ( ... )`` clause; and the WHEN clause is found again in ``pg_get_triggerdef()``
output. Private to :mod:`sa_pgdispatch.triggers`, whose modules import these names.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from ..errors import ArgumentError, DispatchTriggerError, PgDispatchError

MAX_IDENTIFIER_BYTES = 63

__all__ = [
    "MAX_IDENTIFIER_BYTES",
    "SqlScanError",
    "check_identifier",
    "check_when_text",
    "format_ident",
    "parse_function_name",
    "qualified",
    "standardise_strings",
    "tokens",
    "when_from_triggerdef",
]

# ---------------------------------------------------------------------------------------
# identifiers

_BARE_IDENT = re.compile(r"[a-z_][a-z0-9_$]*\Z")
_IDENT_START = re.compile(r"[A-Za-z_\u0080-\U0010ffff]")
_IDENT_CHAR = re.compile(r"[A-Za-z0-9_$\u0080-\U0010ffff]")


def check_identifier(value: str, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise DispatchTriggerError(f"{what} must be a non-empty string, got {value!r}")
    if "\x00" in value:
        raise DispatchTriggerError(f"{what} {value!r} contains a NUL character")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as err:
        raise DispatchTriggerError(f"{what} {value!r} is not valid unicode") from err
    if size > MAX_IDENTIFIER_BYTES:
        raise DispatchTriggerError(
            f"{what} {value!r} is longer than {MAX_IDENTIFIER_BYTES} bytes "
            "(PostgreSQL would truncate it)"
        )
    return value


def format_ident(part: str) -> str:
    """Quote ``part`` like PostgreSQL's ``quote_ident`` would for ``parse_ident``: bare
    when it reads back unchanged, else double-quoted."""
    if _BARE_IDENT.match(part):
        return part
    return '"' + part.replace('"', '""') + '"'


def parse_function_name(name: str) -> tuple[str | None, str]:
    """Parse ``"schema.fn"``, ``"fn"``, ``'"My Schema"."Fn"'`` like PostgreSQL's
    ``parse_ident``: unquoted parts are lower-cased, quoted parts kept verbatim.
    Returns ``(schema or None, function)``."""
    if not isinstance(name, str):
        raise DispatchTriggerError(f"function must be a string, got {name!r}")
    parts: list[str] = []
    i, n = 0, len(name)
    while True:
        while i < n and name[i].isspace():
            i += 1
        if i < n and name[i] == '"':
            j = i + 1
            buf = []
            while True:
                if j >= n:
                    raise DispatchTriggerError(f"unterminated quoted identifier in {name!r}")
                if name[j] == '"':
                    if j + 1 < n and name[j + 1] == '"':
                        buf.append('"')
                        j += 2
                        continue
                    break
                buf.append(name[j])
                j += 1
            part = "".join(buf)
            if not part:
                raise DispatchTriggerError(f"empty quoted identifier in {name!r}")
            i = j + 1
        elif i < n and _IDENT_START.match(name[i]):
            j = i + 1
            while j < n and _IDENT_CHAR.match(name[j]):
                j += 1
            part = name[i:j].translate(_ASCII_LOWER)
            i = j
        else:
            raise DispatchTriggerError(
                f"invalid function name {name!r}: expected 'schema.function' "
                "(identifiers, optionally double-quoted)"
            )
        parts.append(check_identifier(part, "function name part"))
        while i < n and name[i].isspace():
            i += 1
        if i == n:
            break
        if name[i] != ".":
            raise DispatchTriggerError(f"invalid function name {name!r}: unexpected {name[i]!r}")
        i += 1
    if len(parts) > 2:
        raise DispatchTriggerError(
            f"invalid function name {name!r}: at most 'schema.function' (no database part)"
        )
    if len(parts) == 1:
        return None, parts[0]
    return parts[0], parts[1]


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def qualified(schema: str, name: str) -> str:
    return f"{format_ident(schema)}.{format_ident(name)}"


# ---------------------------------------------------------------------------------------
# a small PostgreSQL lexer: enough to keep `when` text inside its parentheses and to
# find the WHEN clause in pg_get_triggerdef() output


class SqlScanError(PgDispatchError, ValueError):
    """Raised by :func:`tokens`, caught by :func:`check_when_text` (never escapes)."""


_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_\u0080-\U0010ffff]*)?\$")


def tokens(sql: str, *, strict: bool) -> Iterator[tuple[str, int, int]]:
    """Yield ``(kind, start, end)`` for the tokens of ``sql``: ``"string"``, ``"ident"``
    (quoted identifier), ``"word"``, ``"space"``, ``"comment"`` or ``"op"`` (one
    character). ``strict`` (user input) refuses comments and backslashes in standard
    strings, whose meaning depends on ``standard_conforming_strings``."""
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c.isspace():
            j = i + 1
            while j < n and sql[j].isspace():
                j += 1
            yield "space", i, j
            i = j
        elif c == "'":
            escape = (
                i > 0
                and sql[i - 1] in "eE"
                and (i < 2 or not _IDENT_CHAR.match(sql[i - 2]) or sql[i - 2] == "$")
            )
            j = i + 1
            while True:
                if j >= n:
                    raise SqlScanError("unterminated string literal")
                ch = sql[j]
                if ch == "\\":
                    if escape:
                        j += 2
                        continue
                    if strict:
                        raise SqlScanError(
                            "backslash in a standard string literal: its meaning depends on "
                            "standard_conforming_strings; use an E'...' string"
                        )
                if ch == "'":
                    if j + 1 < n and sql[j + 1] == "'":
                        j += 2
                        continue
                    break
                j += 1
            yield "string", i, j + 1
            i = j + 1
        elif c == '"':
            j = i + 1
            while True:
                if j >= n:
                    raise SqlScanError("unterminated quoted identifier")
                if sql[j] == '"':
                    if j + 1 < n and sql[j + 1] == '"':
                        j += 2
                        continue
                    break
                j += 1
            yield "ident", i, j + 1
            i = j + 1
        elif (
            c == "$"
            and (i == 0 or not _IDENT_CHAR.match(sql[i - 1]))
            and (m := _DOLLAR_TAG.match(sql, i))
        ):
            tag = m.group(0)
            end = sql.find(tag, m.end())
            if end < 0:
                raise SqlScanError("unterminated dollar-quoted string")
            yield "string", i, end + len(tag)
            i = end + len(tag)
        elif sql.startswith("--", i):
            if strict:
                raise SqlScanError("comments are not allowed")
            j = sql.find("\n", i)
            j = n if j < 0 else j
            yield "comment", i, j
            i = j
        elif sql.startswith("/*", i):
            if strict:
                raise SqlScanError("comments are not allowed")
            depth, j = 1, i + 2
            while depth:
                if j >= n:
                    raise SqlScanError("unterminated comment")
                if sql.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif sql.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            yield "comment", i, j
            i = j
        elif _IDENT_CHAR.match(c):
            j = i + 1
            while j < n and _IDENT_CHAR.match(sql[j]):
                j += 1
            yield "word", i, j
            i = j
        else:
            yield "op", i, i + 1
            i += 1


def check_when_text(sql: str) -> str:
    """Validate ``when`` SQL text: one expression that stays inside ``WHEN ( ... )``.

    Refused: NUL, empty text, unterminated quotes, unbalanced parentheses, ``;``,
    comments, backslashes in standard strings. Returns the stripped text."""
    if not isinstance(sql, str):
        raise DispatchTriggerError(f"when must be SQL text or an expression, got {sql!r}")
    if "\x00" in sql:
        raise DispatchTriggerError("when text contains a NUL character")
    stripped = sql.strip()
    if not stripped:
        raise DispatchTriggerError("when text is empty")
    depth = 0
    try:
        for kind, start, _end in tokens(stripped, strict=True):
            if kind != "op":
                continue
            ch = stripped[start]
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth < 0:
                    raise SqlScanError("unbalanced parentheses")
            elif ch == ";":
                raise SqlScanError("';' is not allowed")
    except SqlScanError as err:
        raise DispatchTriggerError(f"invalid when text {sql!r}: {err}") from None
    if depth:
        raise DispatchTriggerError(f"invalid when text {sql!r}: unbalanced parentheses")
    return stripped


def standardise_strings(sql: str, *, standard_conforming_strings: bool) -> str:
    """Rewrite the plain string literals of ``pg_get_triggerdef()`` output that hold a
    backslash as ``E''`` strings, so that the text means the same under any
    ``standard_conforming_strings`` (and passes :func:`check_when_text`)."""
    out = []
    last = 0
    for kind, start, end in tokens(sql, strict=False):
        if kind != "string" or sql[start] != "'" or "\\" not in sql[start:end]:
            continue
        if start > 0 and _IDENT_CHAR.match(sql[start - 1]):
            continue  # a prefixed literal (E'', B'', U&''): PostgreSQL does not print these
        body = sql[start + 1 : end - 1]
        if standard_conforming_strings:
            body = body.replace("\\", "\\\\")
        out.append(sql[last:start] + "E'" + body + "'")
        last = end
    out.append(sql[last:])
    return "".join(out)


def when_from_triggerdef(definition: str) -> str | None:
    """The WHEN expression of a ``pg_get_triggerdef()`` output, or None."""
    words: list[str] = []
    toks = list(tokens(definition, strict=False))
    for index, (kind, start, end) in enumerate(toks):
        if kind == "word":
            words.append(definition[start:end].upper())
            if words[-1] == "EXECUTE" and words[-4:-2] == ["FOR", "EACH"]:
                return None
        elif kind == "op" and definition[start] == "(":
            if words[-4:] in (["FOR", "EACH", "ROW", "WHEN"], ["FOR", "EACH", "STATEMENT", "WHEN"]):
                depth = 0
                for kind2, start2, _ in toks[index:]:
                    if kind2 == "op" and definition[start2] == "(":
                        depth += 1
                    elif kind2 == "op" and definition[start2] == ")":
                        depth -= 1
                        if depth == 0:
                            return definition[end:start2]
                raise ArgumentError(f"unbalanced WHEN clause in {definition!r}")
            words.append("(")
        elif kind not in ("space", "comment"):
            words.append(definition[start:end])
    return None
