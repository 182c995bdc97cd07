"""The client's dataset files (``client.dataset_file``), judged by the service's own checker,
and ``upload_dataset`` against a scripted transport."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from api_tests.core.datasets.factories import make_dataset
from client import PrunerClient
from client.dataset_file import from_image_folder, from_torchvision, write_dataset
from core.datasets import check_dataset
from core.datasets.record import DatasetPublic, SplitSizes
from core.settings import Settings

SETTINGS = Settings()


def test_arrays_round_trip_through_the_checker(tmp_path: Path) -> None:
    images = np.arange(6 * 4 * 5, dtype=np.uint8).reshape(6, 4, 5)
    path = write_dataset(tmp_path / "d.safetensors", images, [0, 1, 2, 0, 1, 2],
                         splits=[0, 0, 0, 1, 2, 2], class_names=["a", "b", "c"],
                         mean=[0.5], std=[0.25])
    info = check_dataset(path, SETTINGS)
    assert (info.samples, info.channels, info.height, info.width, info.classes,
            info.splits, info.mean, info.std) == (
        6, 1, 4, 5, 3, SplitSizes(train=3, validation=1, test=2), [0.5], [0.25])


def test_the_written_bytes_are_what_safetensors_reads(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    images = np.arange(2 * 3 * 2 * 2, dtype=np.uint8).reshape(2, 3, 2, 2)
    path = write_dataset(tmp_path / "d.safetensors", images, [1, 0])
    loaded = load_file(str(path))
    assert (loaded["images"].tolist(), loaded["labels"].tolist()) == (images.tolist(), [1, 0])


def test_an_image_folder_with_split_folders(tmp_path: Path) -> None:
    colours = {"red": (255, 0, 0), "blue": (0, 0, 255)}
    for split, n in (("train", 3), ("test", 1)):
        for name, colour in colours.items():
            (tmp_path / "photos" / split / name).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (20, 10), colour).save(tmp_path / "photos" / split / name
                                                        / f"{i}.png")
    path = from_image_folder(tmp_path / "photos", tmp_path / "p.safetensors", size=(8, 16))
    info = check_dataset(path, SETTINGS)
    assert (info.channels, info.height, info.width, info.class_names, info.splits) == (
        3, 8, 16, ["blue", "red"], SplitSizes(train=6, validation=0, test=2))


def test_an_empty_image_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ValueError):
        from_image_folder(tmp_path / "empty", tmp_path / "e.safetensors", size=(8, 8))


def test_a_torchvision_dataset_object(tmp_path: Path) -> None:
    from torchvision.datasets import FakeData
    from torchvision.transforms import ToTensor

    train = FakeData(size=6, image_size=(3, 12, 10), num_classes=3, transform=ToTensor())
    test = FakeData(size=2, image_size=(3, 12, 10), num_classes=3, random_offset=99)
    path = from_torchvision({"train": train, "test": test}, tmp_path / "f.safetensors",
                            class_names=["x", "y", "z"])
    info = check_dataset(path, SETTINGS)
    assert (info.channels, info.height, info.width, info.splits) == (
        3, 12, 10, SplitSizes(train=6, validation=0, test=2))


def test_upload_retried_after_503_reuses_its_idempotency_key(tmp_path: Path) -> None:
    path = write_dataset(tmp_path / "d.safetensors", np.zeros((2, 4, 4), np.uint8), [0, 1])
    made = DatasetPublic.from_record(make_dataset())
    keys: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["idempotency-key"])
        if len(keys) == 1:
            return httpx.Response(503, json={"code": "storage_unavailable"},
                                  headers={"Retry-After": "1"})
        return httpx.Response(201, content=made.model_dump_json())

    waits: list[float] = []
    with PrunerClient("http://api.test", transport=httpx.MockTransport(handler),
                      sleep=waits.append) as client:
        got = client.upload_dataset(path)
    assert (got.id, len(keys), len(set(keys))) == (made.id, 2, 1)


def test_list_datasets_follows_the_pages() -> None:
    pages = [{"data": [json.loads(DatasetPublic.from_record(make_dataset(n=1))
                                  .model_dump_json())], "next_cursor": "c1"},
             {"data": [], "next_cursor": None}]
    cursors: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        cursors.append(request.url.params.get("cursor"))
        return httpx.Response(200, json=pages[len(cursors) - 1])

    with PrunerClient("http://api.test", transport=httpx.MockTransport(handler)) as client:
        listed = list(client.list_datasets())
    assert (len(listed), cursors) == (1, [None, "c1"])
