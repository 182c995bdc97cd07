"""A webhook URL naming a non-public address, in any form the resolver reads, is refused
with 422 at submission: nothing is recorded, queued or kept."""

from __future__ import annotations

import json

import pytest

from api_tests.support.api import REFERENCE, Api, ModelFiles
from api_tests.support.problems import assert_problem

# The forms an outside probe found accepted (issue 23), each refused at delivery only.
REFUSED = ["https://localhost/", "https://0x7f000001/", "https://2130706433/",
           "https://127.1/", "https://0177.0.0.1/", "https://0/", "https://LOCALHOST:80/",
           "https://[64:ff9b::7f00:1]/", "https://[2002:7f00:1::]/"]


@pytest.mark.parametrize("url", REFUSED)
def test_address_forms_are_refused_at_submission(
    api: Api, model_files: ModelFiles, url: str
) -> None:
    spec = json.dumps({**REFERENCE, "notify": {"url": url}})
    body = assert_problem(api.submit(model_files.state_dict, spec), 422, "validation_error")
    assert body["errors"][0]["loc"] == ["body", "spec", "notify", "url"]
    assert api.queued_job_ids() == []
    assert sum(api.store.counts_by_status().values()) == 0
