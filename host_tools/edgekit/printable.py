"""Text a peer sent, made safe to print: control characters shown as JSON escapes.

A client id, a telemetry body or a certificate's name is chosen by whoever is at the other end.
Printed raw, an ESC starts a terminal control sequence, a CR or LF forges a log line. JSON's
escapes are what `edgekit gateway telemetry` prints (json.dumps), so every tool shows such a
character the same way: `\\u001b`, `\\n`. JSON leaves DEL and the C1 controls (U+0080-U+009F,
which some terminals obey as 8-bit ESC sequences) raw, and so do the Unicode line separators:
they are escaped too, and escaping them inside a JSON document keeps it valid JSON.
"""
import json
import re

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match):
    return json.dumps(match.group())[1:-1]  # '\n', '\t', else '\u00XX', as JSON writes it


def printable(text):
    """text with every control character replaced by its JSON escape (str() of anything else)."""
    return _CONTROL.sub(_escape, text if isinstance(text, str) else str(text))
