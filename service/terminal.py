"""Text from the service made safe to print on a terminal.

Session ids, models, error messages and the rest are whatever applications sent: an ESC, a
carriage return or a bidi override in them would let a sender rewrite what the terminal of
whoever runs `llm-metrics tail` or `stats` shows. Such characters are printed as escapes.
"""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, line and paragraph separators, and the bidi controls (the
# "Trojan Source" set). Zero-width joiners stay: emoji sequences need them.
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# In JSON output the C0 controls are already `\u00XX` escapes; the rest may appear raw.
UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def _escape(match: re.Match) -> str:
    char = match.group()
    if char in NAMED:
        return NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """`text` as a string with every unsafe character shown as `\\n`, `\\x1b`, `\\u202e`..."""
    return UNSAFE.sub(_escape, str(text))


def printable_json(line: str) -> str:
    """A JSON text with the unsafe characters JSON allows raw written as `\\uXXXX` escapes:
    the same JSON value, safe on a terminal."""
    return UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", line)
