"""torch zip archives (torch.save, torch.jit.save and torch.export.save), judged from the
central directory and the pickles' opcodes: entry count, total and per-entry sizes, names,
duplicates, encryption, compression methods, overlapping entries; then, for a ``.pt2``,
``core.uploads.pt2``; else TorchScript code defining ``__setstate__``, the globals a state_dict
pickle names, its storages and tensors (``core.uploads.storages``).

``zip_format`` is the one answer to "which of the three is this archive?": the door and the
worker's loader both take it from here.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Collection
from pathlib import Path, PurePosixPath

from core.jobs.formats import ModelFormat
from core.settings import MiB, Settings
from core.uploads.allowlists import check_state_dict_globals
from core.uploads.pickle_scan import scan_pickle
from core.uploads.pt2 import check_pt2, is_pt2
from core.uploads.rejection import malformed, too_large, unsafe
from core.uploads.storages import check_storages
from core.uploads.zip_entries import (
    READ_ERRORS,
    check_entries,
    declared_entry_count,
    read_member,
    single_prefix,
    too_many_entries,
)

# TorchScript source (code/*.py) is scanned for load-time hooks; real models have a few
# hundred KiB of it, and the cap keeps the door's decompression work bounded.
MAX_CODE_BYTES = 64 * MiB


def zip_format(names: Collection[str], prefix: str) -> ModelFormat:
    """pt2 when the archive has the records torch.export.load reads (``core.uploads.pt2``);
    TorchScript when it has those torch.jit.load reads (``constants.pkl`` or ``code/`` right
    under the archive's one top-level folder), else a torch.save state_dict. Entries anywhere
    else are never read by any of the loaders."""
    if is_pt2(names, prefix):
        return ModelFormat.PT2
    torchscript = f"{prefix}/constants.pkl" in names or any(
        n.startswith(f"{prefix}/code/") for n in names
    )
    return ModelFormat.TORCHSCRIPT if torchscript else ModelFormat.STATE_DICT


def check_zip(path: Path, settings: Settings) -> ModelFormat:
    """Structure of a torch.save / torch.jit.save / torch.export.save archive, then its
    contents; returns which of the three it is."""
    declared = declared_entry_count(path)
    if declared is not None and declared > settings.max_archive_entries:
        # Refused before zipfile builds an object per entry (millions fit in an upload).
        raise too_many_entries(declared, settings)
    try:
        archive = zipfile.ZipFile(path)
    except READ_ERRORS as exc:
        raise malformed(f"the model file is not a readable zip archive ({exc})") from None
    with archive:
        infos = archive.infolist()
        check_entries(infos, settings)
        prefix = single_prefix(infos)
        names = {i.filename: i for i in infos}
        fmt = zip_format(names, prefix)
        if fmt is ModelFormat.PT2:
            check_pt2(archive, names, prefix, settings)
            return fmt
        _check_data_pkl(names, prefix)
        # Whatever the format: code anywhere in the archive is scanned, so no layout can
        # slip a load-time hook past a check that depends on how the archive looks.
        _check_no_load_hooks(archive, infos)
        _check_pickles(archive, names, prefix, settings, fmt)
    return fmt


def _check_pickles(
    archive: zipfile.ZipFile,
    names: dict[str, zipfile.ZipInfo],
    prefix: str,
    settings: Settings,
    fmt: ModelFormat,
) -> None:
    scan = scan_pickle(read_member(archive, names[f"{prefix}/data.pkl"]), "data.pkl")
    if fmt is ModelFormat.STATE_DICT:
        check_state_dict_globals(scan.globals)
    storages = {f"data/{k}": v for k, v in scan.storages.items()}
    tensors = [t._replace(key=f"data/{t.key}") for t in scan.tensors]
    # TorchScript keeps constant tensors in a pickle of their own, with their storages in
    # constants/. (traced_inputs.pkl, whose storages torch writes empty, is not loaded.)
    if f"{prefix}/constants.pkl" in names:
        info = names[f"{prefix}/constants.pkl"]
        extra = scan_pickle(read_member(archive, info), "constants.pkl")
        storages |= {f"constants/{k}": v for k, v in extra.storages.items()}
        tensors += [t._replace(key=f"constants/{t.key}") for t in extra.tensors]
    torchscript = fmt is ModelFormat.TORCHSCRIPT
    check_storages(storages, tensors, names, prefix, settings, torchscript)


def pickle_globals(path: Path) -> list[str]:
    """Globals ("module.name") the ``data.pkl`` of a torch zip archive names, in order; read
    from the opcodes, nothing executed. Raises UploadRejected for a malformed archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            prefix = single_prefix(infos)
            _check_data_pkl({i.filename: i for i in infos}, prefix)
            info = archive.getinfo(f"{prefix}/data.pkl")
            return scan_pickle(read_member(archive, info), "data.pkl").globals
    except (zipfile.BadZipFile, OSError, KeyError) as exc:
        raise malformed(f"the model file is not a readable zip archive ({exc})") from None


def _check_data_pkl(names: Collection[str], prefix: str) -> None:
    if f"{prefix}/data.pkl" not in names:
        raise malformed(f"the zip archive has no {prefix}/data.pkl")


_SETSTATE = re.compile(rb"__setstate__")


def _is_code(name: str) -> bool:
    """TorchScript source: an entry under a ``code/`` folder, at any depth (debug pickles,
    which quote the author's source, excepted)."""
    return "code" in PurePosixPath(name).parts[:-1] and not name.endswith(".debug_pkl")


def _check_no_load_hooks(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> None:
    """torch.jit.load calls the ``__setstate__`` of every scripted object it unpickles, so
    such code would run before audit_torchscript could see it: refuse any archive whose
    TorchScript source (the ``code/`` entries torch.jit.load compiles) defines it; ordinary
    nn.Module code never does."""
    code = [i for i in infos if _is_code(i.filename)]
    total = sum(i.file_size for i in code)
    if total > MAX_CODE_BYTES:
        raise too_large(
            f"the TorchScript archive holds {total} bytes of code; at most {MAX_CODE_BYTES} "
            "are accepted"
        )
    for info in code:
        try:
            with archive.open(info) as f:
                data = f.read(MAX_CODE_BYTES + 1)
        except READ_ERRORS as exc:
            raise malformed(f"the zip entry {info.filename!r} cannot be read ({exc})") from None
        if _SETSTATE.search(data):
            raise unsafe(
                f"the TorchScript archive defines __setstate__ (in {info.filename!r}); "
                "torch.jit.load would run it while loading, before any audit, so such "
                "archives are refused. Script the model without custom __getstate__/"
                "__setstate__, or send a state_dict or safetensors file."
            )
