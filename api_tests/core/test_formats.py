"""Model formats, defined once (core.jobs.formats), and the spec's output_format built on them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.jobs.formats import FORMAT_FILES, ModelFormat, UploadFormat
from core.jobs.spec import JobSpec
from core.storage.protocols import model_file


def test_every_format_has_one_file_name_and_extension() -> None:
    assert set(FORMAT_FILES) == set(ModelFormat)
    assert {f: (model_file(f), f.extension, f.container) for f in ModelFormat} == {
        ModelFormat.TORCHSCRIPT: ("model.torchscript.pt", "pt", UploadFormat.ZIP),
        ModelFormat.STATE_DICT: ("model.state_dict.pt", "pth", UploadFormat.ZIP),
        ModelFormat.SAFETENSORS: ("model.safetensors", "safetensors", UploadFormat.SAFETENSORS),
        ModelFormat.SPARSE_SAFETENSORS: ("model.sparse.safetensors", "sparse.safetensors",
                                         UploadFormat.SAFETENSORS),
        ModelFormat.PT2: ("model.pt2", "pt2", UploadFormat.ZIP),
        ModelFormat.COMPRESSED: ("model.prz", "prz", UploadFormat.COMPRESSED),
        ModelFormat.ONNX: ("model.onnx", "onnx", None),
        ModelFormat.ONNX_INT8: ("model.int8.onnx", "int8.onnx", None),
        ModelFormat.TORCHAO_INT8: ("model.int8.pt", "int8.pt", None),
    }
    assert model_file("state_dict") == "model.state_dict.pt"


@pytest.mark.parametrize(
    "value", ["same", "torchscript", "state_dict", "safetensors", "sparse_safetensors", "pt2",
              "compressed"]
)
def test_output_format_takes_same_and_every_format(value: str) -> None:
    spec = JobSpec.model_validate_json(f'{{"output_format": "{value}"}}')
    assert spec.output_format == value
    assert JobSpec.model_validate_json(spec.model_dump_json()) == spec
    assert (spec.output_format == "same") is not isinstance(spec.output_format, ModelFormat)


def test_output_format_contract_is_one_enum() -> None:
    """One error naming every choice, and one flat enum in the JSON schema (the contract
    clients had when OutputFormat was its own enum)."""
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate_json('{"output_format": "pickle"}')
    assert info.value.errors(include_url=False) == [{
        "type": "enum", "loc": ("output_format",), "input": "pickle",
        "msg": "Input should be 'same', 'torchscript', 'state_dict', 'safetensors', "
               "'sparse_safetensors', 'pt2' or 'compressed'",
        "ctx": {"expected": "'same', 'torchscript', 'state_dict', 'safetensors', "
                            "'sparse_safetensors', 'pt2' or 'compressed'"},
    }]
    assert JobSpec().output_format == "same"
    assert JobSpec.model_json_schema()["properties"]["output_format"] == {
        "title": "OutputFormat", "type": "string", "default": "same",
        "enum": ["same", "torchscript", "state_dict", "safetensors", "sparse_safetensors",
                 "pt2", "compressed"],
    }
