"""Foreign text made safe for a terminal or a log line (protocol section 10).

Command lines, error messages and ids come from other processes and from the
wire. Printed raw, a newline in them forges a log line, an escape sequence
moves the cursor or retitles the operator's terminal, and a Unicode bidi
override makes ``evil.sh`` read as ``hs.live``. :func:`escape` writes every
such character as a visible escape instead:

* C0 controls (U+0000..U+001F, tab and newline too), DEL (U+007F) and the C1
  controls (U+0080..U+009F) as ``\\xNN``;
* the bidi embeddings and overrides (U+202A..U+202E) and isolates
  (U+2066..U+2069) as ``\\uNNNN``;
* a lone surrogate (a JSON ``"\\ud800"`` decodes to one; no terminal or UTF-8
  log can take it) as ``\\uNNNN``;
* a backslash stays as it is: the output is for reading, not for decoding.

Everything else, printable non-ASCII included, is kept. The module imports
only the standard library, so the operator tools can use it.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["UNSAFE", "escape", "escape_all"]

#: What :func:`escape` rewrites (see the module docstring).
UNSAFE: Final = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape(text: object) -> str:
    """``str(text)`` with every control, bidi override and lone surrogate escaped."""
    value = text if isinstance(text, str) else str(text)
    return UNSAFE.sub(_visible, value)


def escape_all(items: object) -> list[str]:
    """:func:`escape` of each item of a list (a command line); ``[]`` for anything else."""
    if not isinstance(items, list):
        return []
    return [escape(item) for item in items]
