"""Indexer settings, from RAGQA_* environment variables; every default works offline on a laptop.

The service's settings (service/config.py) extend these, so the store and the model are named once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from indexer.embedding import DEFAULT_MODEL

if TYPE_CHECKING:
    from indexer.milvus_store import MilvusLocation


class IndexSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAGQA_", extra="ignore")

    store: str = Field(
        "var/store",
        description="the store: a folder (the local store), or Milvus: milvus-lite:///abs/path/file.db "
        "(embedded), milvus://host:19530/alias or milvus+tls://host:19530/alias (a server; its token in "
        "RAGQA_MILVUS_TOKEN)",
    )
    work_store: Path = Field(
        Path("var/store"),
        description="with a Milvus store: the indexer's local store, which each run updates "
        "incrementally and then publishes to Milvus as a new version",
    )
    model: str = Field(DEFAULT_MODEL, description="sentence-transformers model name or local folder")
    batch_size: int = Field(32, ge=1, le=1024, description="texts per model call")
    chunk_tokens: int = Field(
        256, ge=32, description="largest chunk in model tokens, title and special tokens included"
    )
    chunk_overlap: int = Field(1, ge=0, le=10, description="sentences shared by consecutive chunks")
    max_file_mb: float = Field(100, gt=0, description="larger files are skipped")
    lock_wait: float = Field(30, ge=0, description="seconds to wait for another indexer to finish")

    @field_validator("store", mode="before")
    @classmethod
    def _store(cls, value: Any) -> Any:
        """A folder may be given as a Path; a Milvus setting must parse (ValueError says why)."""
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, str):
            from indexer.milvus_store import parse_location

            parse_location(value)
        return value

    @property
    def milvus(self) -> MilvusLocation | None:
        """The Milvus store the store setting names (None: the local store)."""
        from indexer.milvus_store import parse_location

        return parse_location(self.store)

    @property
    def local_store(self) -> Path:
        """The local store folder the indexer writes: the store itself, or with Milvus `work_store`."""
        return self.work_store if self.milvus is not None else Path(self.store)


def settings_error(exc: ValidationError) -> str:
    """A settings error in one line a person can read: which setting, and what is wrong with it."""
    problems = []
    for error in exc.errors():
        name = ".".join(str(p) for p in error.get("loc", ()))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        problems.append(f"RAGQA_{name.upper()}: {message}")
    return "invalid settings: " + "; ".join(problems)
