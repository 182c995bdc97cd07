"""The .pt2 validator (core/uploads/pt2.py, pt2_program.py), rule by rule, and the hostile
corpus (api_tests/security/hostile_pt2.py) at the door: each case refused with its reason
kind and member named, the canary untouched. Control tests show the corpus is real: handed
to torch.export.load, its payloads run."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from api_tests.security import hostile as h
from api_tests.security import hostile_pt2 as p
from api_tests.security.uploads.refusal import rejected
from core.jobs.formats import ModelFormat
from core.settings import Settings
from core.uploads import RejectKind, UploadRejected, check_upload
from core.uploads.pt2_program import SCHEMA_MAJOR, SCHEMA_MINOR, check_expression


def test_a_real_export_passes(tmp_path: Path, settings: Settings) -> None:
    assert check_upload(p.good_pt2(tmp_path), settings) is ModelFormat.PT2


def test_the_schema_version_is_torchs(tmp_path: Path) -> None:
    from torch._export.serde.schema import SCHEMA_VERSION

    assert (SCHEMA_MAJOR, SCHEMA_MINOR) == SCHEMA_VERSION


@pytest.mark.parametrize("case", list(p.CORPUS))
def test_hostile_corpus_refused_at_the_door(
    case: str, tmp_path: Path, settings: Settings, canary: Path
) -> None:
    make, kind, says = p.CORPUS[case]
    refusal = rejected(make(tmp_path, canary), settings)
    assert (refusal.status, refusal.code) == (413 if kind == "too_large" else 422, (
        "payload_too_large" if kind == "too_large" else "invalid_upload"))
    assert refusal.kind == RejectKind(kind)
    assert says in refusal.message
    assert canary.read_text() == h.CANARY_TEXT


def test_control_torch_export_load_runs_a_pickled_weight(tmp_path: Path, canary: Path) -> None:
    """Why the validator exists: torch.export.load itself runs the payload."""
    with pytest.raises(Exception):  # noqa: B017 - the payload returns None, not a tensor
        torch.export.load(str(p.pickled_weight(tmp_path, canary)))
    assert canary.read_text() == "pwned"


def test_control_torch_export_load_runs_pickled_sample_inputs(
    tmp_path: Path, canary: Path
) -> None:
    try:
        torch.export.load(str(p.pickled_sample_inputs(tmp_path, canary)))
    except Exception:  # noqa: BLE001, S110 - whatever happens after, the payload ran
        pass
    assert canary.read_text() == "pwned"


# --- one rule at a time ---------------------------------------------------------------------


def test_records_must_say_pt2_little_endian(tmp_path: Path, settings: Settings) -> None:
    path = p.tamper(tmp_path, "big.pt2", replace={"byteorder": b"big"})
    refusal = rejected(path, settings)
    assert (refusal.kind, refusal.message) == (RejectKind.MALFORMED, (
        "the member 'byteorder' says 'big'; expected a little-endian pt2 archive "
        "(torch.export.save)"))


def test_a_missing_member_is_named(tmp_path: Path, settings: Settings) -> None:
    good = p.good_pt2(tmp_path)
    path = tmp_path / "no_inputs.pt2"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            if not info.filename.endswith("sample_inputs/model.pt"):
                zout.writestr(info, zin.read(info))
    assert rejected(path, settings).message == (
        "the pt2 archive lacks data/sample_inputs/model.pt")


def test_a_second_program_is_unsupported(tmp_path: Path, settings: Settings) -> None:
    path = p.tamper(tmp_path, "two.pt2", add={"models/other.json": b"{}"})
    refusal = rejected(path, settings)
    assert refusal.kind is RejectKind.UNSUPPORTED
    assert "'models/other.json' is not one torch.export.save writes" in refusal.message


def test_a_payload_outside_its_folder_naming(tmp_path: Path, settings: Settings) -> None:
    path = p.tamper(tmp_path, "rename.pt2",
                    weights=lambda c: p._first(c).update(path_name="../constants/tensor_0"))
    refusal = rejected(path, settings)
    assert refusal.kind is RejectKind.MALFORMED
    assert "names '../constants/tensor_0', which is not a weight_<n> member" in refusal.message


def test_aliases_must_agree_on_dtype(tmp_path: Path, settings: Settings) -> None:
    def alias(config: dict[str, dict[str, dict[str, object]]]) -> None:
        entries = config["config"]
        first = json.loads(json.dumps(next(iter(entries.values()))))
        first["tensor_meta"]["dtype"] = 5  # int64 over float32 bytes
        entries["alias"] = first

    refusal = rejected(p.tamper(tmp_path, "alias.pt2", weights=alias), settings)
    assert "reads 'weight_0' as int64; another entry reads it as float32" in refusal.message


def test_weights_on_another_device_are_unsupported(tmp_path: Path, settings: Settings) -> None:
    path = p.tamper(tmp_path, "cuda.pt2", weights=lambda c: p._first(c)["tensor_meta"].update(
        device={"type": "cuda", "index": 0}))
    refusal = rejected(path, settings)
    assert refusal.kind is RejectKind.UNSUPPORTED
    assert "export the model on the CPU" in refusal.message


def test_tensor_caps(tmp_path: Path) -> None:
    refusal = rejected(p.good_pt2(tmp_path), Settings(max_tensor_elements=1000))
    assert refusal.kind is RejectKind.TOO_LARGE
    assert "has 12544 elements; the limit is 1000" in refusal.message
    refusal = rejected(p.good_pt2(tmp_path), Settings(max_tensors=2))
    assert refusal.message == "the archive holds over 2 tensors (PRUNER_MAX_TENSORS)"


def test_opset_and_script_object_inputs(tmp_path: Path, settings: Settings) -> None:
    path = p.tamper(tmp_path, "opset.pt2",
                    program=lambda g: g["opset_version"].update(evil=1))
    assert rejected(path, settings).message == (
        "models/model.json declares operator sets ['aten', 'evil']; only aten is accepted")

    def script_input(program: dict[str, dict[str, dict[str, list[object]]]]) -> None:
        program["graph_module"]["signature"]["input_specs"].append(
            {"custom_obj": {"arg": {"name": "obj"}, "custom_obj_name": "obj"}})

    refusal = rejected(p.tamper(tmp_path, "obj.pt2", program=script_input), settings)
    assert refusal.kind is RejectKind.UNSAFE
    assert "input_specs hold custom_obj" in refusal.message


def test_a_fixed_batch_size_is_unsupported(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(p.TinyNet().eval(), (torch.zeros(4, 1, 28, 28),)),
                      str(path))
    refusal = rejected(path, settings)
    assert (refusal.kind, refusal.message) == (RejectKind.UNSUPPORTED, (
        "models/model.json: the input 'x' has a fixed batch size 4; export with a dynamic "
        'batch: dynamic_shapes=({0: torch.export.Dim("batch")},)'))


def test_a_script_object_as_graph_input_is_unsafe(tmp_path: Path, settings: Settings) -> None:
    def object_input(program: dict[str, dict[str, dict[str, list[object]]]]) -> None:
        program["graph_module"]["graph"]["inputs"].append({"as_custom_obj": {"name": "o"}})

    refusal = rejected(p.tamper(tmp_path, "in.pt2", program=object_input), settings)
    assert (refusal.kind, refusal.message) == (RejectKind.UNSAFE, (
        "models/model.json: the graph's inputs takes an argument of kind 'as_custom_obj'; "
        "only tensors, sizes and plain values are accepted (no subgraphs, script objects or "
        "operators)"))


def test_range_constraints_are_symbols_with_integer_bounds(
    tmp_path: Path, settings: Settings
) -> None:
    path = p.tamper(tmp_path, "range.pt2", program=lambda g: g["range_constraints"].update(
        {"__import__('os')": {"min_val": 0, "max_val": None}}))
    assert rejected(path, settings).kind is RejectKind.UNSAFE


@pytest.mark.parametrize("expr", [
    "Symbol('s77', positive=True, integer=True)",
    "784*Symbol('s0', integer=True)",
    "FloorDiv(Symbol('s0', positive=True, integer=True), 2) + 1",
])
def test_shape_expressions_torch_writes_pass(expr: str) -> None:
    check_expression(expr, "here")


@pytest.mark.parametrize("expr", [
    "__import__('os').system('id')",
    "Symbol('s0').__class__",
    "Symbol('s0', positive=[x for x in ()])",
    "lambda: 0",
])
def test_other_shape_expressions_are_refused(expr: str) -> None:
    with pytest.raises(UploadRejected) as info:
        check_expression(expr, "here")
    assert info.value.kind is RejectKind.UNSAFE
