"""/v1/architectures: the registry a state_dict or safetensors upload can name."""

from __future__ import annotations

from fastapi import APIRouter

from core.architectures import ARCHITECTURES, ArchitectureInfo
from service.errors import NotFound, problem_responses
from service.schemas import ArchitecturesPublic

router = APIRouter(prefix="/v1/architectures", tags=["architectures"])


@router.get("", response_model=ArchitecturesPublic)
def list_architectures() -> ArchitecturesPublic:
    """Architectures a state_dict/safetensors upload can name, with every tensor's shape."""
    return ArchitecturesPublic(data=list(ARCHITECTURES.values()))


@router.get("/{name}", response_model=ArchitectureInfo, responses=problem_responses(NotFound))
def get_architecture(name: str) -> ArchitectureInfo:
    """One architecture: its state_dict keys and shapes, and the widths it is built with."""
    if name not in ARCHITECTURES:
        raise NotFound(f"no architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]
