"""The docker stack, checked statically: no Docker engine runs here.

``docker/compose.yaml`` is validated against a strict subset of the Compose Specification
(``data/compose-subset.schema.json``) plus cross-references (dependencies, health checks,
volumes, build contexts); each Dockerfile is parsed instruction by instruction.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
SCHEMA = Path(__file__).parent / "data" / "compose-subset.schema.json"

REQUIRED_SERVICES = {"postgres", "minio", "mlflow", "prefect-server", "prefect-worker", "bento"}
INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip
_VAR = re.compile(r"\$\{([^}]*)\}")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    out: list[Instruction] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if not buf:
            start = n
        buf += " " + line.removesuffix("\\").strip() if buf else line.removesuffix("\\").strip()
        if not line.endswith("\\"):
            keyword, _, args = buf.partition(" ")
            out.append(Instruction(keyword.upper(), args.strip(), start))
            buf = ""
    assert not buf, "Dockerfile ends inside a continued line"
    return out


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def dockerfiles(compose: dict) -> list[tuple[str, Path, Path]]:
    """(service, build context, Dockerfile) of every built service."""
    out = []
    for name, svc in compose["services"].items():
        if "build" in svc:
            context = (DOCKER / svc["build"]["context"]).resolve()
            out.append((name, context, context / svc["build"].get("dockerfile", "Dockerfile")))
    return out


def test_compose_matches_the_schema(compose):
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(compose), key=str)
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_stack_has_every_service(compose):
    assert set(compose["services"]) >= REQUIRED_SERVICES


def test_dependencies_exist_and_health_conditions_have_health_checks(compose):
    services = compose["services"]
    built_healthchecks = {
        name for name, _, df in dockerfiles(compose) if "HEALTHCHECK" in df.read_text()
    }
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        for dep, spec in deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps):
            assert dep in services, f"{name} depends on unknown service {dep}"
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep] or dep in built_healthchecks, (
                    f"{name} waits for {dep} to be healthy but {dep} has no health check"
                )


def test_volumes_and_bind_mounts_resolve(compose):
    declared = set(compose.get("volumes", {}))
    for name, svc in compose["services"].items():
        for spec in svc.get("volumes", []):
            source = spec.split(":")[0]
            if source.startswith((".", "/")):
                assert (DOCKER / source).exists(), f"{name}: bind mount {source} missing"
            else:
                assert source in declared, f"{name}: volume {source} not declared"


def test_variable_references_are_well_formed():
    text = COMPOSE.read_text()
    for ref in _VAR.findall(text.replace("$${", "")):
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*(:?[-?][^}]*)?", ref), f"bad reference ${{{ref}}}"


def test_service_wiring_is_consistent(compose):
    services = compose["services"]
    worker = services["prefect-worker"]["environment"]
    assert worker["PREFECT_API_URL"].startswith("http://prefect-server:4200")
    tracking = worker["PBF_TRACKING_URI"]
    assert tracking == services["bento"]["environment"]["PBF_TRACKING_URI"]
    host = tracking.removeprefix("http://")
    allowed = next(a for a in services["mlflow"]["command"] if a.startswith("--allowed-hosts="))
    assert host in allowed.split("=", 1)[1].split(","), "MLflow would reject the worker's Host"
    pool = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"][0]["work_pool"]
    worker_df = parse_dockerfile((DOCKER / "worker.Dockerfile").read_text())
    cmd = json.loads(next(i.args for i in worker_df if i.keyword == "CMD"))
    assert cmd[cmd.index("--pool") + 1] == pool["name"]


@pytest.mark.parametrize("name", ["mlflow", "prefect-worker"])
def test_dockerfiles_parse_and_follow_the_rules(compose, name):
    (_, context, path), *_ = [d for d in dockerfiles(compose) if d[0] == name]
    assert path.is_file(), path
    instructions = parse_dockerfile(path.read_text())
    keywords = [i.keyword for i in instructions]
    unknown = {k for k in keywords if k not in INSTRUCTIONS}
    assert not unknown, f"{path.name}: unknown instructions {unknown}"
    assert next(k for k in keywords if k != "ARG") == "FROM", "first instruction must be FROM"
    args = dict(a.args.partition("=")[::2] for a in instructions if a.keyword == "ARG")
    for i in instructions:
        if i.keyword == "FROM":  # a ${BASE_IMAGE} base: its ARG default is checked
            image = _VAR.sub(lambda m: args.get(m.group(1), ""), i.args.split()[0])
            assert ":" in image and not image.endswith(":latest"), f"unpinned base image {image}"
        if i.keyword in {"CMD", "ENTRYPOINT"} and i.args.startswith("["):
            assert isinstance(json.loads(i.args), list), f"line {i.line}: bad exec form"
        if i.keyword in {"COPY", "ADD"}:
            words = [w for w in shlex.split(i.args) if not w.startswith("--")]
            assert not any("--from" in w for w in i.args.split()), "multi-stage COPY not expected"
            for src in words[:-1]:
                assert not src.startswith(("http://", "https://")), "no remote ADD"
                assert (context / src).exists(), f"{path.name}:{i.line}: {src} not in context"
        if i.keyword == "EXPOSE":
            assert all(p.split("/")[0].isdigit() for p in i.args.split())
    assert {"CMD", "ENTRYPOINT"} & set(keywords), "no CMD or ENTRYPOINT"
    users = [i.args for i in instructions if i.keyword == "USER"]
    assert users and users[-1] not in {"root", "0"}, "the container must not run as root"


def test_worker_entrypoint_is_an_executable_strict_shell_script():
    script = DOCKER / "worker-entrypoint.sh"
    text = script.read_text()
    assert text.startswith("#!/bin/sh") and "set -eu" in text and 'exec "$@"' in text
    assert os.access(script, os.X_OK)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'FROM a:1\nRUN x \\\n  && y\n# c\nCMD ["z"]\n',
            [("FROM", "a:1"), ("RUN", "x && y"), ("CMD", '["z"]')],
        ),
        ("# only a comment\n", []),
        ("from a:1\n\n", [("FROM", "a:1")]),
    ],
)
def test_parser(text, expected):
    assert [(i.keyword, i.args) for i in parse_dockerfile(text)] == expected


@pytest.mark.parametrize(
    "bad",
    [
        {"services": {"a": {"imag": "x:1"}}},  # typo
        {"services": {"a": {"command": ["x"]}}},  # neither image nor build
        {"services": {"a": {"image": "x:1", "ports": ["http"]}}},
        {"services": {"a": {"image": "x:1", "depends_on": {"b": {"condition": "ready"}}}}},
        {"services": {}},
    ],
)
def test_schema_rejects_broken_compose_files(bad):
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    assert list(validator.iter_errors(bad))
