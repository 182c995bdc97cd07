"""Zip structure shared by every torch archive (torch.save, torch.jit.save, torch.export.save),
judged from the central directory: the declared entry count (read before ``zipfile`` builds an
object per entry), entry count, names (absolute, ``..``, backslash, NUL), duplicates,
encryption, compression methods and ratio, total size, overlapping entries; the archive's one
top-level folder; bounded reads of one member."""

from __future__ import annotations

import re
import struct
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from core.settings import MiB, Settings
from core.uploads.rejection import UploadRejected, malformed, too_large

# data.pkl / constants.pkl are read whole and walked opcode by opcode in Python (~0.6 us an
# opcode here): a state_dict's pickle is ~150 bytes per tensor (1.5 MB at the 10 000-tensor
# cap), and 8 MiB bounds the worst case (one-byte opcodes) to ~5 s of a thread.
MAX_PICKLE_BYTES = 8 * MiB
# Entries smaller than this are not judged by their compression ratio: a few KiB of zeros
# compress 200x yet cannot hurt anyone, and TorchScript's deflated sources vary a lot.
RATIO_CHECK_MIN_BYTES = 1 * MiB

_ALLOWED_COMPRESSION = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
# What zipfile raises on corrupt archives: bad headers and CRCs, broken deflate streams...
READ_ERRORS = (
    zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, NotImplementedError,
    RuntimeError,
)



def too_many_entries(count: int, settings: Settings) -> UploadRejected:
    return too_large(
        f"the zip archive has {count} entries; the limit is {settings.max_archive_entries} "
        "(PRUNER_MAX_ARCHIVE_ENTRIES)"
    )


_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_EOCD = b"PK\x06\x06"


def declared_entry_count(path: Path) -> int | None:
    """Entry count from the end-of-central-directory record (zip64 too), read from the last
    64 KiB of the file; None when there is none (zipfile then says what is wrong)."""
    with path.open("rb") as f:
        size = f.seek(0, 2)
        tail_start = max(0, size - (22 + 65535 + 20))
        f.seek(tail_start)
        tail = f.read()
        at = tail.rfind(_EOCD)
        if at < 0 or len(tail) < at + 22:
            return None
        count: int = struct.unpack("<H", tail[at + 10 : at + 12])[0]
        locator = at - 20
        if count != 0xFFFF or locator < 0 or tail[locator : locator + 4] != _ZIP64_LOCATOR:
            return count
        (record_at,) = struct.unpack("<Q", tail[locator + 8 : locator + 16])
        f.seek(record_at)
        record = f.read(56)
    if len(record) < 56 or record[:4] != _ZIP64_EOCD:
        return None
    zip64_count: int = struct.unpack("<Q", record[32:40])[0]
    return zip64_count


def check_entries(infos: list[zipfile.ZipInfo], settings: Settings) -> None:
    """Count, names, duplicates, encryption, compression, ratio, total size, overlaps."""
    if len(infos) > settings.max_archive_entries:
        raise too_many_entries(len(infos), settings)
    seen: set[str] = set()
    total = 0
    for info in infos:
        name = info.filename
        _check_entry_name(name)
        if name in seen:
            raise malformed(f"the zip archive holds the entry {name!r} twice")
        seen.add(name)
        if info.flag_bits & 0x1:
            raise malformed(f"the zip entry {name!r} is encrypted")
        if info.compress_type not in _ALLOWED_COMPRESSION:
            raise malformed(
                f"the zip entry {name!r} uses compression method {info.compress_type}; "
                "only stored (0) and deflate (8) are accepted"
            )
        total += info.file_size
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size >= RATIO_CHECK_MIN_BYTES and ratio > settings.max_compression_ratio:
            raise too_large(
                f"the zip entry {name!r} expands {ratio:.0f}x ({info.compress_size} -> "
                f"{info.file_size} bytes); the limit is {settings.max_compression_ratio:g}x "
                "(PRUNER_MAX_COMPRESSION_RATIO)"
            )
    if total > settings.max_uncompressed_bytes:
        raise too_large(
            f"the zip archive declares {total} uncompressed bytes; the limit is "
            f"{settings.max_uncompressed_bytes} (PRUNER_MAX_UNCOMPRESSED_BYTES)"
        )
    _check_no_overlaps(infos)


def _check_no_overlaps(infos: list[zipfile.ZipInfo]) -> None:
    """Each entry's local header and data end before the next entry starts: overlapping
    entries (one compressed stream read through many names) are how the densest zip bombs
    get past per-entry ratios. 30 bytes + the name is the smallest local header."""
    ordered = sorted(infos, key=lambda i: i.header_offset)
    for this, following in zip(ordered, ordered[1:], strict=False):
        end = this.header_offset + 30 + len(this.orig_filename.encode()) + this.compress_size
        if end > following.header_offset:
            raise malformed(
                f"the zip entries {this.filename!r} and {following.filename!r} overlap"
            )


def _check_entry_name(name: str) -> None:
    parts = PurePosixPath(name).parts
    if (
        "\\" in name
        or "\x00" in name
        or name.startswith("/")
        or re.match(r"^[A-Za-z]:", name)
        or ".." in parts
    ):
        raise malformed(
            f"the zip entry name {name!r} is absolute, climbs out with '..', or holds a "
            "backslash or NUL"
        )


def single_prefix(infos: list[zipfile.ZipInfo]) -> str:
    """torch archives keep everything under one top-level folder."""
    prefixes = {i.filename.split("/", 1)[0] for i in infos}
    if len(prefixes) != 1 or not all("/" in i.filename for i in infos):
        raise malformed(
            "the zip archive is not a torch.save, torch.jit.save or torch.export.save "
            "archive (expected one top-level folder holding data.pkl or models/)"
        )
    return prefixes.pop()



def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo,
                limit: int = MAX_PICKLE_BYTES) -> bytes:
    """An entry, whole, within ``limit`` bytes (by default a pickle's, ``MAX_PICKLE_BYTES``):
    the declared size is judged before reading, and no more than the limit is ever read."""
    if info.file_size > limit:
        raise too_large(
            f"the zip entry {info.filename!r} has {info.file_size} bytes; at most {limit} "
            "are accepted"
        )
    try:
        with archive.open(info) as f:
            data = f.read(limit + 1)
    except READ_ERRORS as exc:
        raise malformed(f"the zip entry {info.filename!r} cannot be read ({exc})") from None
    if len(data) != info.file_size:
        raise malformed(f"the zip entry {info.filename!r} is not the size it declares")
    return data
