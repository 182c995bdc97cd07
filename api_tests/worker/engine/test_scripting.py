"""The guarded ``torch.jit.script``: a builtin-table key left by a freed op no longer makes an
ordinary attribute that reuses its address look like an operator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.jit import _builtins

from worker.engine import scripting


class Padded(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


@pytest.fixture
def stale() -> Iterator[tuple[Padded, int]]:
    """A model whose conv padding list sits at an address the builtin table still holds, as
    after an op object registered there was freed and the list allocated in its place."""
    model = Padded().eval()
    key = id(model.conv._reversed_padding_repeated_twice)
    table = _builtins._get_builtin_table()  # type: ignore[no-untyped-call]
    assert key not in table
    table[key] = "aten::freed_op"
    yield model, key
    table.pop(key, None)


def test_a_stale_key_breaks_plain_scripting(stale: tuple[Padded, int]) -> None:
    """The failure the guard exists for, reproduced deterministically (the CI failure read
    the same on GoogLeNet)."""
    model, _ = stale
    with pytest.raises(RuntimeError, match="builtin cannot be used as a value"):
        torch.jit.script(model)


def test_script_forgets_the_stale_key_and_matches_eager(stale: tuple[Padded, int]) -> None:
    model, key = stale
    scripted = scripting.script(model)
    assert key not in _builtins._get_builtin_table()  # type: ignore[no-untyped-call]
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=0)


def test_live_operators_stay_in_the_table() -> None:
    """Keys of callables (the real operators, math functions, types) are never dropped, even
    when a module holds one as an attribute."""
    table = _builtins._get_builtin_table()  # type: ignore[no-untyped-call]
    before = dict(table)
    model = Padded()
    model.activation = torch.relu  # type: ignore[assignment]
    assert scripting.forget_stale_builtins(model) == []
    assert table == before
