"""The dataset checker (``core.datasets.check_dataset``), one rule per test."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from api_tests.core.datasets.files import arrays, write_npz, write_safetensors
from core.datasets import DatasetRejected, check_dataset
from core.datasets.record import DatasetFormat, SplitSizes
from core.settings import Settings
from core.uploads import RejectKind

SETTINGS = Settings()


def refused(path: Path, settings: Settings = SETTINGS) -> DatasetRejected:
    with pytest.raises(DatasetRejected) as info:
        check_dataset(path, settings)
    return info.value


def test_a_good_safetensors_dataset_is_described(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "d.safetensors", arrays(shape=(3, 32, 32)),
                             classes=["a", "b", "c"])
    info = check_dataset(path, SETTINGS)
    assert (info.format, info.samples, info.channels, info.height, info.width,
            info.classes, info.class_names, info.splits) == (
        DatasetFormat.SAFETENSORS, 12, 3, 32, 32, 3, ["a", "b", "c"],
        SplitSizes(train=8, validation=2, test=2))


@pytest.mark.parametrize("compressed", [False, True])
def test_a_good_npz_dataset_is_described(tmp_path: Path, compressed: bool) -> None:
    path = write_npz(tmp_path / "d.npz", arrays(), compressed=compressed)
    info = check_dataset(path, SETTINGS)
    assert (info.format, info.samples, info.channels, info.height, info.classes) == (
        DatasetFormat.NPZ, 12, 1, 8, 3)


def test_without_splits_every_sample_is_train(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "d.safetensors", arrays(splits=False))
    assert check_dataset(path, SETTINGS).splits == SplitSizes(train=12, validation=0, test=0)


def test_mean_and_std_per_channel_are_read(tmp_path: Path) -> None:
    tensors = {**arrays(shape=(3, 4, 4)), "mean": np.array([0.5, 0.4, 0.3], np.float32),
               "std": np.array([0.25, 0.25, 0.5], np.float32)}
    info = check_dataset(write_safetensors(tmp_path / "d.safetensors", tensors), SETTINGS)
    assert (info.mean, info.std) == ([0.5, 0.4000000059604645, 0.30000001192092896],
                                     [0.25, 0.25, 0.5])


@pytest.mark.parametrize(("change", "field", "message"), [
    ({"images": np.zeros((12, 8, 8), np.float32)}, "images", "dtype float32; images are uint8"),
    ({"images": np.zeros((12, 2, 8, 8), np.uint8)}, "images", "shape [12, 2, 8, 8]; expected"),
    ({"images": np.zeros((12, 8), np.uint8)}, "images", "shape [12, 8]; expected"),
    ({"labels": np.zeros(12, np.int32)}, "labels", "dtype I32 is not one a dataset holds"),
    ({"labels": np.zeros(12, np.uint8)}, "labels", "dtype uint8; labels are int64"),
    ({"labels": np.zeros(11, np.int64)}, "labels", "shape [11]; expected [12]"),
    ({"labels": np.array([-1] + [1] * 11, np.int64)}, "labels", "values span -1..1; labels"),
    ({"labels": np.zeros(12, np.int64)}, "labels", "every label is 0"),
    ({"splits": np.full(12, 3, np.uint8)}, "splits", "values must be 0 (train), 1"),
    ({"splits": np.full(12, 2, np.uint8)}, "splits", "no sample is marked train"),
    ({"splits": np.zeros(12, np.int64)}, "splits", "int64 [12]; expected uint8 [12]"),
    ({"mean": np.zeros(3, np.float32)}, "mean", "float32 [3]; expected float32 [1]"),
    ({"std": np.zeros(1, np.float32)}, "std", "[0.0]: must be finite and > 0"),
    ({"extra": np.zeros(1, np.float32)}, "extra", "unexpected array"),
])
def test_each_rule_names_its_array(tmp_path: Path, change: dict[str, np.ndarray], field: str,
                                   message: str) -> None:
    path = write_safetensors(tmp_path / "d.safetensors", {**arrays(), **change})
    err = refused(path)
    assert (err.field, err.kind, err.message.startswith(f"{field}: {message}")) == (
        field, RejectKind.MALFORMED, True), err.message


def test_missing_labels_are_named(tmp_path: Path) -> None:
    tensors = arrays()
    del tensors["labels"]
    assert refused(write_safetensors(tmp_path / "d.safetensors", tensors)).field == "labels"


def test_labels_beyond_the_class_names_are_refused(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "d.safetensors", arrays(), classes=["a", "b"])
    assert refused(path).message == "labels: values span 0..2; labels must be 0..1 (one per " \
        "class name)"


def test_too_many_classes_are_refused(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "d.safetensors", arrays(classes=12))
    err = refused(path, Settings(max_dataset_classes=10))
    assert (err.field, err.kind) == ("labels", RejectKind.TOO_LARGE)


def test_images_over_the_side_cap_are_refused(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "d.safetensors", arrays(shape=(3, 40, 8)))
    err = refused(path, Settings(max_dataset_side=32))
    assert (err.field, err.kind) == ("images", RejectKind.TOO_LARGE)


def test_a_file_over_the_size_limit_is_refused_before_reading(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "d.safetensors", arrays())
    err = refused(path, Settings(max_dataset_bytes=100))
    assert (err.field, err.kind) == ("file", RejectKind.TOO_LARGE)


def test_a_truncated_safetensors_file_is_refused(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "d.safetensors", arrays())
    path.write_bytes(path.read_bytes()[:-10])
    assert refused(path).message == ("splits: ends at data byte 876 but the file holds 866 "
                                     "(truncated?)")


def test_a_truncated_npz_is_refused(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz", arrays())
    path.write_bytes(path.read_bytes()[:-40])
    assert refused(path).field == "file"


def test_an_npz_with_a_pickled_member_is_refused_as_unsafe(tmp_path: Path) -> None:
    tensors: dict[str, np.ndarray] = {**arrays(), "labels": np.array([object()] * 12)}
    path = write_npz(tmp_path / "d.npz", tensors)
    err = refused(path)
    assert (err.field, err.kind) == ("labels", RejectKind.UNSAFE)


def rewrite_member(path: Path, member: str, old: bytes, new: bytes) -> None:
    """Edit one member's bytes and write a consistent zip (CRCs right): only the npy lies."""
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    assert old in members[member]
    members[member] = members[member].replace(old, new)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def test_an_npz_whose_header_lies_about_its_size_is_refused(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz", arrays())
    rewrite_member(path, "images.npy", b"'shape': (12, 8, 8)", b"'shape': (99, 8, 8)")
    assert refused(path).message == ("images: shape [99, 8, 8] of uint8 needs 6464 bytes "
                                     "with its header; the member has 896")


def test_an_npz_header_that_is_code_is_not_run(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz", arrays())
    text = b"{'descr': '|u1', 'fortran_order': False, 'shape': (12, 8, 8), }"
    evil = f"__import__('os').system('touch {tmp_path}/pwned')".encode()
    rewrite_member(path, "images.npy", text, evil.ljust(len(text)))
    refused(path)
    assert not (tmp_path / "pwned").exists()


def test_a_file_that_is_neither_container_is_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "d.bin"
    path.write_bytes(b"\x00" * 64)
    assert refused(path).kind == RejectKind.NOT_A_MODEL
