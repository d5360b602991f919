"""Indexer settings, from RAGQA_* environment variables; every default works offline on a laptop.

The service's settings (service/config.py) extend these, so the store and the model are named once."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from indexer.embedding import DEFAULT_MODEL


class IndexSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAGQA_", extra="ignore")

    store: Path = Field(Path("var/store"), description="the store folder")
    model: str = Field(DEFAULT_MODEL, description="sentence-transformers model name or local folder")
    batch_size: int = Field(32, ge=1, le=1024, description="texts per model call")
    chunk_tokens: int = Field(
        256, ge=32, description="largest chunk in model tokens, title and special tokens included"
    )
    chunk_overlap: int = Field(1, ge=0, le=10, description="sentences shared by consecutive chunks")
    max_file_mb: float = Field(100, gt=0, description="larger files are skipped")
    lock_wait: float = Field(30, ge=0, description="seconds to wait for another indexer to finish")
