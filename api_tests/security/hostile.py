"""Factories of hostile and broken model files, built in the test run (nothing opaque is
committed). Plain functions: each writes a file under a directory it is given and returns its
path. The canary file is what an attack would read or overwrite; tests check it is untouched.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from core.jobs.error_codes import JobErrorCode
from worker.engine import scripting
from worker.engine.audit import audit_torchscript
from worker.engine.errors import EngineError

CANARY_TEXT = "canary: untouched\n"


def make_canary(directory: Path) -> Path:
    path = directory / "canary.txt"
    path.write_text(CANARY_TEXT)
    return path


# --- pickles that run code -------------------------------------------------------------------


class _Shell:
    """Unpickling this calls os.system(command)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


class _Exec:
    """Unpickling this calls exec(source) (builtins.exec)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (self.source,))


def _torch_zip(path: Path, data_pkl: bytes, extra: dict[str, bytes] | None = None) -> Path:
    """A zip laid out like torch.save's: ``archive/data.pkl`` + bookkeeping entries."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        for name, data in (extra or {}).items():
            z.writestr(f"archive/{name}", data)
    return path


def shell_pickle_zip(directory: Path, canary: Path) -> Path:
    """torch.save-shaped archive whose pickle runs a shell command overwriting the canary."""
    payload = {"fc1.weight": _Shell(f"echo pwned > {canary}")}
    return _torch_zip(directory / "shell.pt", pickle.dumps(payload, protocol=2))


def exec_pickle_zip(directory: Path, canary: Path) -> Path:
    """torch.save-shaped archive whose pickle (protocol 4, STACK_GLOBAL) writes the canary."""
    payload = {"w": _Exec(f"open({str(canary)!r}, 'w').write('pwned')")}
    return _torch_zip(directory / "exec.pt", pickle.dumps(payload, protocol=4))


def raw_shell_pickle(directory: Path, canary: Path) -> Path:
    """A bare pickle (legacy torch.save format) that runs a shell command."""
    path = directory / "raw.pkl"
    path.write_bytes(pickle.dumps(_Shell(f"echo pwned > {canary}"), protocol=2))
    return path


# --- TorchScript ----------------------------------------------------------------------------


class ReadsFile(nn.Module):
    """forward maps the canary into a tensor with torch.from_file (reads a file)."""

    def __init__(self, canary: str) -> None:
        super().__init__()
        self.canary = canary
        self.fc = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leak = torch.from_file(self.canary, shared=False, size=4, dtype=torch.uint8)
        return self.fc(x.flatten(1)) + leak.sum().float()


class WritesFile(nn.Module):
    """forward maps the canary shared and overwrites it (writes a file)."""

    def __init__(self, canary: str) -> None:
        super().__init__()
        self.canary = canary
        self.fc = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mapped = torch.from_file(self.canary, shared=True, size=4, dtype=torch.uint8)
        mapped.fill_(33)
        # used in the output, or TorchScript's dead-code elimination drops the mapping
        return self.fc(x.flatten(1)) + mapped.float().sum() * 0


def save_script(module: nn.Module, path: Path) -> Path:
    torch.jit.save(scripting.script(module), str(path))
    return path


def torchscript_reads_canary(directory: Path, canary: Path) -> Path:
    return save_script(ReadsFile(str(canary)), directory / "reads.pt")


def torchscript_writes_canary(directory: Path, canary: Path) -> Path:
    return save_script(WritesFile(str(canary)), directory / "writes.pt")


class Stateful(nn.Module):
    """Benign custom __getstate__/__setstate__: torch.jit.load calls __setstate__."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(10, 784))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x.flatten(1), self.weight)

    @torch.jit.export
    def __getstate__(self) -> tuple[bool, torch.Tensor]:
        return (self.training, self.weight)

    @torch.jit.export
    def __setstate__(self, state: tuple[bool, torch.Tensor]) -> None:
        self.training = state[0]
        self.weight = state[1]


def overwrite_canary_code(canary: Path) -> str:
    """TorchScript source lines that overwrite the canary through a shared file mapping."""
    return (
        f"    mapped = torch.from_file({str(canary)!r}, True, 4, dtype=0)\n"
        "    _9 = torch.fill_(mapped, 33)\n"
    )


def torchscript_setstate_hook(directory: Path, payload: str) -> Path:
    """A TorchScript archive whose __setstate__ (run by torch.jit.load itself, at load time)
    starts with ``payload`` (TorchScript source lines): the archive code edited by hand, as an
    attacker would."""
    plain = save_script(Stateful(), directory / "plain.pt")
    path = directory / "setstate.pt"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith(".py"):
                data = re.sub(
                    rb"(def __setstate__\(.*?\) -> NoneType:\n)",
                    lambda m: m[1] + payload.encode(),
                    data,
                    count=1,
                    flags=re.S,
                )
            dst.writestr(info, data)
    return path


class WrongOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


# --- archives --------------------------------------------------------------------------------


def state_dict_file(directory: Path, tensors: dict[str, torch.Tensor], name: str = "sd.pt") -> Path:
    path = directory / name
    torch.save(tensors, str(path))
    return path


def rewrite_zip(src: Path, dst: Path, replace: dict[str, bytes]) -> Path:
    """Copy a zip, replacing the content of some entries (matched by name suffix)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            for suffix, new in replace.items():
                if info.filename.endswith(suffix):
                    data = new
            zout.writestr(info, data)
    return dst


def zip_bomb(directory: Path, uncompressed: int = 16 * 1024 * 1024) -> Path:
    """One deflated entry of zeros that expands ~1000x."""
    path = directory / "bomb.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
        z.writestr("archive/data/0", bytes(uncompressed), compress_type=zipfile.ZIP_DEFLATED)
    return path


def many_entries(directory: Path, count: int) -> Path:
    path = directory / "many.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
        for i in range(count):
            z.writestr(f"archive/extra/{i}", b"")
    return path


def zip_with_entry(directory: Path, name: str, fname: str = "odd.pt") -> Path:
    path = directory / fname
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
        z.writestr(zipfile.ZipInfo(name), b"x")
    return path


def duplicate_entry_zip(directory: Path) -> Path:
    path = directory / "dup.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
        with_warning = zipfile.ZipInfo("archive/data.pkl")
        z.writestr(with_warning, pickle.dumps({"x": 1}, protocol=2))
    return path


def encrypted_entry_zip(directory: Path) -> Path:
    """An entry flagged encrypted (general purpose bit 0), set in the central directory
    (zipfile clears flag bits when writing, so the bytes are patched afterwards)."""
    path = directory / "enc.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
        z.writestr("archive/secret", b"ciphertext")
    raw = bytearray(path.read_bytes())
    at = raw.find(b"PK\x01\x02", raw.find(b"PK\x01\x02") + 4)  # the second entry's record
    assert raw[at + 46 : at + 46 + 14] == b"archive/secret"
    raw[at + 8] |= 0x1
    path.write_bytes(bytes(raw))
    return path


# --- safetensors -----------------------------------------------------------------------------


def safetensors_raw(directory: Path, header: object, data: bytes, name: str = "m.safetensors",
                    header_len: int | None = None) -> Path:
    """A safetensors file with a header we write ourselves (any JSON, any claimed length)."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    length = len(raw) if header_len is None else header_len
    path = directory / name
    path.write_bytes(struct.pack("<Q", length) + raw + data)
    return path


def to_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save(tensors, buf)
    return buf.getvalue()


def refused(module: torch.jit.ScriptModule) -> str:
    """The audit's message for a module it must refuse as ``unsafe_model``."""
    with pytest.raises(EngineError) as info:
        audit_torchscript(module)
    assert info.value.code is JobErrorCode.UNSAFE_MODEL
    return info.value.message
