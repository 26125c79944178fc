"""The names of the files inside a ZIP attachment, for the rules that judge attachments by name.

A program is rarely attached as itself any more: mail systems refuse ``invoice.pdf.exe``, so it
comes as ``invoice.zip`` holding it.  rspamd's mime_types module looks into archives for the same
reason.  Only the archive's central directory is read (the list of names at its end), never a
member's content: listing costs microseconds whatever the members would inflate to, so a zip bomb
costs nothing here (clamd, when it is on, is the one that opens members).

The bytes are the sender's.  Python's zipfile raises several kinds of error on a damaged or
hostile directory (BadZipFile, but also ValueError, EOFError, struct.error, NotImplementedError
...); each means the same thing to a mail filter, "no names can be read", so this one function
catches them all and says so with an empty answer: an exception caused by message bytes must not
reach the check.
"""

from __future__ import annotations

import io
import zipfile

MAX_MEMBERS = 200  # names reported per archive: enough for any real archive, bounded for a crafted one
ZIP_TYPES = frozenset({"application/zip", "application/x-zip-compressed", "application/x-zip"})


def is_zip(content_type: str, filename: str | None) -> bool:
    """A part sent as a ZIP archive (not an Office document, which is a ZIP of XML by design)."""
    return content_type in ZIP_TYPES or (filename or "").rstrip(" .").lower().endswith(".zip")


def member_names(data: bytes) -> tuple[str, ...]:
    """The file names in a ZIP archive's directory (at most MAX_MEMBERS); () when it cannot be read."""
    if not data.startswith(b"PK"):
        return ()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = []
            for info in archive.infolist():
                if not info.is_dir():
                    names.append(info.filename.rsplit("/", 1)[-1])
                if len(names) >= MAX_MEMBERS:
                    break
            return tuple(names)
    except Exception:  # every way a hostile directory fails means "no names": see above
        return ()
