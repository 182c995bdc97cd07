"""Mutation fuzzing of the door check: whatever bytes arrive, ``check_upload`` answers with a
format or an ``UploadRejected`` (a 4xx), never another exception (which the API would turn
into a 500). Seeded, so a failure reproduces."""

from __future__ import annotations

import random
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from api_tests.security import hostile as h
from api_tests.security.uploads.refusal import refusal
from core.settings import Settings
from core.uploads import UploadRejected, check_upload

MUTATIONS = 300


def seeds(tmp_path: Path) -> dict[str, bytes]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4))
    sd = h.state_dict_file(tmp_path, model.state_dict())  # type: ignore[arg-type]
    ts = h.save_script(model, tmp_path / "ts.pt")
    save_file(dict(model.state_dict()), str(tmp_path / "m.safetensors"))
    return {"state_dict": sd.read_bytes(), "torchscript": ts.read_bytes(),
            "safetensors": (tmp_path / "m.safetensors").read_bytes()}


def mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0:  # flip bytes
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    elif kind == 1:  # truncate
        del buf[rng.randrange(4, len(buf)):]
    elif kind == 2:  # overwrite a 4-byte field with an extreme value
        at = rng.randrange(len(buf) - 4)
        buf[at:at + 4] = struct.pack("<I", rng.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF]))
    elif kind == 3:  # duplicate a slice
        a = rng.randrange(len(buf))
        b = min(len(buf), a + rng.randint(1, 200))
        buf[b:b] = buf[a:b]
    else:  # delete a slice
        a = rng.randrange(len(buf))
        del buf[a:a + rng.randint(1, 50)]
    return bytes(buf)


def test_mutated_pickles_never_crash_the_scan(tmp_path: Path) -> None:
    """The archive stays valid (CRCs recomputed) while its data.pkl is mutated, so the
    symbolic pickle scan itself is what gets fuzzed."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4))
    src = h.state_dict_file(tmp_path, model.state_dict())  # type: ignore[arg-type]
    original = zipfile.ZipFile(src).read("sd/data.pkl")
    rng = random.Random("door-pickle")
    settings = Settings()
    rejected = 0
    for i in range(MUTATIONS):
        path = h.rewrite_zip(src, tmp_path / f"p{i % 2}.pt",
                             {"data.pkl": mutate(original, rng)})
        try:
            check_upload(path, settings)
        except UploadRejected as exc:
            assert refusal(exc).status in (413, 415, 422)
            rejected += 1
    assert rejected > MUTATIONS // 2


@pytest.mark.parametrize("kind", ["state_dict", "torchscript", "safetensors"])
def test_mutated_files_never_crash_the_door(tmp_path: Path, kind: str) -> None:
    original = seeds(tmp_path)[kind]
    rng = random.Random(f"door-{kind}")
    settings = Settings()
    path = tmp_path / "mutated"
    outcomes = {"accepted": 0, "rejected": 0}
    for _ in range(MUTATIONS):
        path.write_bytes(mutate(original, rng))
        try:
            check_upload(path, settings)
            outcomes["accepted"] += 1
        except UploadRejected as exc:
            assert refusal(exc).status in (413, 415, 422)
            outcomes["rejected"] += 1
    assert outcomes["rejected"] > 0 and sum(outcomes.values()) == MUTATIONS
