"""Command-line secret redaction: the one place that decides what a secret looks like.

Theory of operation. A command line is a list of arguments; a secret hides in
four shapes, each replaced by ``[REDACTED]`` while everything else is kept so
the line stays readable:

1. the argument after a flag that names a secret (``--password X``,
   ``--db-password X``, ``-Dfoo.password X``, ``--accessToken X``);
2. the value of ``NAME=value`` when ``NAME`` names a secret (``--token=X``,
   ``PGPASSWORD=X``, ``AWS_SECRET_ACCESS_KEY=X``); a non-secret name is looked
   through (``--env=API_TOKEN=X``);
3. the password of a URL (``redis://user:X@host``) and a URL query parameter
   that names a secret (``?access_token=X``);
4. an HTTP credential header (``Authorization: Bearer X``).

An argument containing whitespace (``sh -c "PGPASSWORD=x psql"``) is split on
whitespace and redacted as a small command line of its own, separators kept.

Properties the tests hold us to: the output has as many arguments as the input,
redaction is idempotent (``[REDACTED]`` never looks like a secret-bearing
shape), and a secret value in any of the shapes above never survives. When in
doubt we over-redact: a boolean flag such as ``--no-password`` costs the next
argument, which is cheaper than leaking one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

__all__ = ["REDACTED", "redact_cmdline"]

REDACTED: Final = "[REDACTED]"

# Secret words that are specific enough to count anywhere inside a NAME of
# ``NAME=value`` (PGPASSWORD, SECRET_KEY_BASE, GITHUB_TOKEN_V2).
_LONG_WORDS: Final = (
    r"password|passwd|passphrase|secret|token|credential|"
    r"api[-_.]?key|access[-_.]?key|private[-_.]?key"
)
# Words that name a secret only as the last word of a flag name: short ones
# (pass, pwd, auth) would match innocent words (bypass, author) as substrings.
_NAME_WORDS: Final = (
    r"password|passwd|passphrase|pass|pwd|token|secret|auth|credentials?|"
    r"api[-_.]?key|access[-_.]?key|private[-_.]?key|secret[-_.]?key"
)
# A flag name that ends in a secret word: either the whole name, or after a
# prefix that ends at a separator (db-password, foo.password) or at a camelCase
# boundary (dbPassword). Each prefix repetition must end at a separator, so the
# pattern cannot backtrack exponentially.
_SECRET_NAME: Final = (
    r"(?:[A-Za-z0-9]+[-_.])*(?:[A-Za-z0-9]*[a-z0-9](?=[A-Z]))?(?i:" + _NAME_WORDS + r")"
)
_SECRET_FLAG_RE: Final = re.compile(r"-{1,2}" + _SECRET_NAME)
_SECRET_NAME_RE: Final = re.compile(_SECRET_NAME)
_LONG_WORD_RE: Final = re.compile(_LONG_WORDS, re.IGNORECASE)
# NAME=value: the name is a plain identifier, optionally with leading dashes.
_KEY_VALUE_RE: Final = re.compile(r"(-{0,2})([A-Za-z0-9_.\-]+)=(.*)", re.DOTALL)
# URL userinfo: scheme://user:password@ — the password runs to the last '@'
# before the path, query or fragment (RFC 3986 forbids an unescaped '/', '?'
# or '#' in it, but not '@' in practice).
_URL_USERINFO_RE: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)[^\s/?#]*(?=@)")
_URL_QUERY_RE: Final = re.compile(
    r"([?&;][A-Za-z0-9_.\-]*(?:" + _LONG_WORDS + r"|auth)[A-Za-z0-9_.\-]*=)[^&#\s]*",
    re.IGNORECASE,
)
_HEADER_RE: Final = re.compile(
    r"((?:proxy-)?authorization|x-[a-z0-9-]*(?:token|key|secret|auth)[a-z0-9-]*|cookie)"
    r"(\s*:\s*)\S.*",
    re.IGNORECASE | re.DOTALL,
)
_WS_SPLIT_RE: Final = re.compile(r"(\s+)")


def redact_cmdline(args: Sequence[str]) -> list[str]:
    """Return ``args`` with every secret value replaced by ``[REDACTED]``, same length."""
    out: list[str] = []
    redact_next = False
    for arg in args:
        out.append(REDACTED if redact_next else _redact_text(arg))
        redact_next = _is_secret_flag(arg)
    return out


def _is_secret_flag(arg: str) -> bool:
    """Whether ``arg`` is a flag (no value attached) whose name names a secret."""
    return _SECRET_FLAG_RE.fullmatch(arg) is not None


def _names_secret(key: str) -> bool:
    """Whether the NAME of ``NAME=value`` names a secret."""
    return _LONG_WORD_RE.search(key) is not None or _SECRET_NAME_RE.fullmatch(key) is not None


def _redact_text(text: str) -> str:
    """Redact the secrets inside one argument (shapes 2 to 4, and split on whitespace)."""
    header = _HEADER_RE.fullmatch(text)
    if header is not None:
        return header.group(1) + header.group(2) + REDACTED
    kv = _KEY_VALUE_RE.fullmatch(text)
    if kv is not None:
        dashes, key, value = kv.groups()
        if _names_secret(key):
            return f"{dashes}{key}={REDACTED}"
        return f"{dashes}{key}={_redact_text(value)}"
    if _WS_SPLIT_RE.search(text) is not None:
        parts = _WS_SPLIT_RE.split(text)
        words = redact_cmdline(parts[0::2])
        parts[0::2] = words
        return "".join(parts)
    if "://" in text:
        text = _URL_USERINFO_RE.sub(lambda m: m.group(1) + REDACTED, text)
    if "=" in text:
        text = _URL_QUERY_RE.sub(lambda m: m.group(1) + REDACTED, text)
    return text
