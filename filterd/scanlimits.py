"""Would clamd have looked at all of this message?  Our own count of what its limits cut.

clamd stops looking past its limits -- MaxRecursion (nesting of MIME parts and archives),
MaxFileSize (one file, an archive member included), MaxScanSize (all the data it unpacks for one
message), MaxFiles (files in archives) -- and what it did not look at, it answers OK for.  With
``AlertExceedsMax yes`` it says ``Heuristics.Limits.Exceeded.*`` instead, for the limits that check
it; but not every limit does: clamd 1.4 trims a zip member larger than MaxFileSize to the limit
and scans only that prefix, with no alert ("cli_unzip: trimming output size to maxfilesize"), so
EICAR after 25 MiB of zeros in a zip is "OK" even with AlertExceedsMax.  And a clamd configured
without AlertExceedsMax (Debian's default) says OK for all of them.

So the antivirus check counts for itself, against limits that mirror clamd's, and never calls a
message Clean when the count says clamd may not have seen all of it:

- depth: the MIME depth (`Message.mime_depth`, root 0) plus the deepest nesting of zip archives
  in any part.  Each level counts one; clamd also counts the message itself and each decoded
  attachment, so its count is higher than ours, and flagging at ``depth >= max_recursion`` errs
  on the safe side.  Measured with clamd 1.4.6: at MaxRecursion 17 EICAR is missed at MIME depth
  19 or in 16 zips in an attachment, at 16 (Debian's value) at MIME depth 18 or in 15 zips; with
  max_recursion 16 we flag MIME depth 16, or 15 zips at MIME depth 1.  max_recursion must not be
  above clamd's MaxRecursion (clamd cannot be asked for it).
- sizes: every MIME leaf and every zip member (its declared size, the larger of the central
  directory's and the local header's) against max_file_size, and their sum against max_scan_size.
- files: the zip members counted against max_files.

The work is bounded: zips are read from their central directories (the stdlib's `zipfile`); a
member is decompressed only when it is itself a zip (its first bytes say so), never past its
declared size, which is at most max_file_size, and the bytes decompressed for one message never
exceed max_scan_size.  Nothing here raises on malformed input: a zip we cannot read is left to
clamd (it is not a limit).  Other archive formats (rar, 7z, tar, gzip) are clamd's alone.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass, field

import fast_mail_parser

from filterd.message import Message

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header, or the end record of an empty zip
_EOCD = b"PK\x05\x06"
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # signature ... compressed size, size, name/extra lengths


@dataclass(frozen=True)
class ScanLimits:
    """Mirrors of clamd's MaxRecursion, MaxFileSize, MaxScanSize and MaxFiles."""

    max_recursion: int
    max_file_size: int
    max_scan_size: int
    max_files: int


@dataclass
class _Count:
    limits: ScanLimits
    depth: int = 0  # deepest archive nesting seen in one part
    files: int = 0
    total: int = 0  # bytes, declared, of every leaf and member
    unpacked: int = 0  # bytes we decompressed ourselves
    problems: list[str] = field(default_factory=list)

    def note(self, problem: str) -> None:
        if problem not in self.problems:
            self.problems.append(problem)


def exceeded(message: Message, limits: ScanLimits) -> list[str]:
    """The clamd limits this message passes ("MaxRecursion (MIME depth 19)", ...); empty when none."""
    count = _Count(limits)
    mime_depth = message.mime_depth
    if mime_depth >= limits.max_recursion:  # enough said; and a tree this deep is slow to walk again
        return [f"MaxRecursion (MIME depth {mime_depth} >= {limits.max_recursion})"]
    for payload in _leaf_payloads(message, count):
        _size(count, len(payload), "a MIME part")
        if _looks_like_zip(payload):
            _zip(count, payload, 1)
    if mime_depth + count.depth >= limits.max_recursion:
        count.note(
            f"MaxRecursion (MIME depth {mime_depth} + archive depth {count.depth} >= {limits.max_recursion})"
        )
    if count.total > limits.max_scan_size:
        count.note(f"MaxScanSize ({count.total} bytes in parts and archive members > {limits.max_scan_size})")
    if count.files > limits.max_files:
        count.note(f"MaxFiles ({count.files} archive members > {limits.max_files})")
    return count.problems


def _leaf_payloads(message: Message, count: _Count) -> list[bytes]:
    """The decoded payload of every MIME leaf, over the whole tree (up to max_files leaves)."""
    try:
        root = fast_mail_parser.parse_email_tree(message.raw, mode="lazy")
    except fast_mail_parser.ParseError:
        # the stdlib's view, as the other checks see it (at most message.MAX_PARTS nodes)
        try:
            return [leaf.payload() for leaf in message.leaves]
        except RecursionError:
            count.note("MaxRecursion (MIME structure too deep to parse)")
            return []
    out: list[bytes] = []
    stack = [root]
    while stack:
        node = stack.pop()
        if node.children:
            stack.extend(reversed(node.children))
            continue
        if len(out) >= count.limits.max_files:
            count.note(f"MaxFiles (more than {count.limits.max_files} MIME parts)")
            break
        try:
            out.append(node.content or b"")
        except fast_mail_parser.DecodeError:
            out.append(b"")
    return out


def _looks_like_zip(data: bytes) -> bool:
    # an end-of-central-directory record near the end: a zip, or a self-extracting one
    return data[:4] in ZIP_MAGIC or _EOCD in data[-(65536 + 22) :]


def _size(count: _Count, size: int, what: str) -> None:
    count.total += size
    if size > count.limits.max_file_size:
        count.note(f"MaxFileSize ({what} of {size} bytes > {count.limits.max_file_size})")


def _zip(count: _Count, data: bytes, depth: int) -> None:
    """Count one zip at nesting `depth` (1: a MIME part's own), descending into zips inside it."""
    limits = count.limits
    count.depth = max(count.depth, depth)
    if depth >= limits.max_recursion:
        return  # already past the limit: nothing deeper changes the answer
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError):
        return  # not a zip we can read: clamd's to judge
    with archive:
        for info in members:
            count.files += 1
            if count.files > limits.max_files:
                return
            size = max(info.file_size, _local_size(data, info))
            _size(count, size, f"zip member {info.filename!r}")
            if size > limits.max_file_size or info.is_dir():
                continue
            if count.unpacked + size > limits.max_scan_size:
                count.note(f"MaxScanSize (more than {limits.max_scan_size} bytes to unpack)")
                return
            inner = _read_if_zip(archive, info, count)
            if inner is not None:
                _zip(count, inner, depth + 1)


def _local_size(data: bytes, info: zipfile.ZipInfo) -> int:
    """The uncompressed size the member's local header declares (clamd reads that one), or 0."""
    try:
        fields = _LOCAL_HEADER.unpack_from(data, info.header_offset)
    except struct.error:
        return 0
    size = int(fields[9])
    return 0 if fields[0] != b"PK\x03\x04" or size == 0xFFFFFFFF else size


def _read_if_zip(archive: zipfile.ZipFile, info: zipfile.ZipInfo, count: _Count) -> bytes | None:
    """The member's bytes when it is itself a zip, else None; never more than its declared size."""
    try:
        with archive.open(info) as member:
            head = member.read(4)
            if head not in ZIP_MAGIC:
                count.unpacked += len(head)
                return None
            data = head + member.read(info.file_size - len(head))
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, ValueError, OSError, EOFError, zlib.error):
        return None  # encrypted, an unknown method, corrupt: clamd's to judge
    count.unpacked += len(data)
    return data
