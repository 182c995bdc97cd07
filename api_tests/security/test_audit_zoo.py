"""Every classifier family of torchvision's model zoo passes the upload audit, scripted and
traced, so the allow-list cannot fall behind the models people ship; and the one op let in
under a condition (``aten::empty``, uninitialised memory) is refused when it is read."""

from __future__ import annotations

import pytest
import torch
import torchvision.models as tv

from api_tests.security.hostile import refused
from testkit import zoo
from worker.engine import scripting
from worker.engine.audit import find_disallowed


def test_every_torchvision_classifier_has_a_family() -> None:
    names = tv.list_models(module=tv)
    assert [n for n in names if zoo.family_of(n) is None] == []


@pytest.mark.parametrize("how", ["script", "trace"])
@pytest.mark.parametrize("family", sorted(zoo.FAMILIES))
def test_zoo_family_passes_the_audit(family: str, how: str) -> None:
    module = zoo.compile_(zoo.build(family), how, family)
    assert find_disallowed(module) == []


class ReadsEmpty(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.empty(x.shape)  # whatever bytes the allocator hands back


class FillsEmpty(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.empty(x.shape).bernoulli_(0.5)


def test_empty_is_refused_unless_filled_at_once() -> None:
    assert "aten::empty in ReadsEmpty.forward" in refused(scripting.script(ReadsEmpty()))
    assert find_disallowed(scripting.script(FillsEmpty())) == []
