"""Where the client finds the API: flags first, else PRUNER_URL and PRUNER_API_KEY."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_URL = "http://127.0.0.1:8000"


class ClientSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PRUNER_", extra="ignore")

    url: str = Field(default=DEFAULT_URL, description="The API's base URL.")
    api_key: SecretStr | None = Field(
        default=None, description="Sent as `Authorization: Bearer <key>` when set."
    )
