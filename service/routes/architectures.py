"""/v1/architectures: the registry a state_dict or safetensors upload can name."""

from __future__ import annotations

from fastapi import APIRouter

from core.jobs.architectures import ARCHITECTURES, ArchitectureInfo
from core.jobs.public import ArchitecturesPublic
from service.auth import ReadDep
from service.errors import AUTH_ERRORS, NotFound, problem_responses

router = APIRouter(prefix="/v1/architectures", tags=["architectures"])


@router.get("", response_model=ArchitecturesPublic, responses=problem_responses(*AUTH_ERRORS))
def list_architectures(who: ReadDep) -> ArchitecturesPublic:
    """Architectures a state_dict/safetensors upload can name, with every tensor's shape."""
    return ArchitecturesPublic(data=list(ARCHITECTURES.values()))


@router.get("/{name}", response_model=ArchitectureInfo,
            responses=problem_responses(NotFound, *AUTH_ERRORS))
def get_architecture(name: str, who: ReadDep) -> ArchitectureInfo:
    """One architecture: its state_dict keys and shapes, and the widths it is built with."""
    if name not in ARCHITECTURES:
        raise NotFound(f"no architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]
