"""The board's manifest (/.edgekit-manifest.json), read as untrusted input.

Whoever holds the board or its drive can write any manifest, so a deploy acts only on
entries edgekit itself could have written: {"version": 1, "files": {path: [sha256, size]}}
whose paths are normalized absolute board paths where a deploy puts files. A malformed
manifest counts as none (every file is hashed instead); a path outside that layout is
ignored, with one line each.
"""
import posixpath
import re

from edgekit.deploy.plan import BUNDLE_DIR, MANIFEST

MANIFEST_VERSION = 1
ROMFS_KEY = "romfs:0"  # the manifest entry of the image in ROMFS partition 0 (not a file)
# Where deploy puts files (plan.py's board layout); it never writes anywhere else.
DEPLOY_DIRS = ("/lib", BUNDLE_DIR)
ENTRY_FILES = ("/main.py", "/code.py", "/boot.py", "/settings.toml")
# A manifest edgekit writes is about 100 bytes a file: a bigger one was not written by edgekit.
MAX_BYTES = 256 * 1024
UNREADABLE = 0  # what the board's reader gives for a manifest that is not JSON or too big
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NAMED = 5  # ignored paths named one line each; the rest counted in one more line


def untrusted_reason(path):
    """Why a board path a manifest lists is not one deploy could have put there, or None."""
    if not isinstance(path, str) or not path.startswith("/") or path.startswith("//"):
        return "not an absolute board path"
    if "\0" in path or "\\" in path or any(ord(c) < 32 for c in path):
        return "a NUL, backslash or control character"
    if ".." in path.split("/"):
        return "it climbs with '..'"
    if posixpath.normpath(path) != path:
        return "not a normalized path"
    if path in ENTRY_FILES or any(path.startswith(d + "/") for d in DEPLOY_DIRS):
        return None
    return f"outside {', '.join(DEPLOY_DIRS)} and the entry files"


def _entry_ok(entry):
    return (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
            and _SHA256.fullmatch(entry[0]) is not None
            and type(entry[1]) is int and entry[1] >= 0)


def malformed_reason(doc):
    """Why a parsed manifest is not one edgekit wrote, or None."""
    if not isinstance(doc, dict):
        return "not a JSON object"
    if doc.get("version") != MANIFEST_VERSION:
        return f"version is not {MANIFEST_VERSION}"
    files = doc.get("files")
    if not isinstance(files, dict):
        return "'files' is not an object"
    for path, entry in files.items():
        if not isinstance(path, str):
            return "a path that is not a string"
        if not _entry_ok(entry):
            return f"{path[:60]!r} is not [sha256, size]"
    return None


def trusted_entries(doc):
    """(entries deploy may act on, lines to show) from the manifest json.load gave (None: none).

    A malformed manifest gives no entries; a well-formed one loses the paths deploy never puts
    anywhere. The lines say which, once each (the first few named).
    """
    if doc is None:
        return {}, []
    why = malformed_reason(doc)
    if why:
        return {}, [f"the board's manifest {MANIFEST} is not one edgekit wrote ({why}): not trusted,"
                    " treated as no manifest (every file is hashed instead)"]
    entries, ignored = {}, []
    for path, entry in doc["files"].items():
        why = None if path == ROMFS_KEY else untrusted_reason(path)
        if why:
            ignored.append((path, why))
        else:
            entries[path] = list(entry)
    return entries, _ignored_lines(ignored)


def _ignored_lines(ignored):
    lines = [f"the board's manifest lists {path!r} ({why}): not trusted, ignored"
             for path, why in ignored[:_NAMED]]
    if len(ignored) > _NAMED:
        lines.append(f"the board's manifest lists {len(ignored) - _NAMED} more path(s) deploy never"
                     " writes: not trusted, ignored")
    return lines
