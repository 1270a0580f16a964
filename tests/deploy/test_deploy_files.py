"""The operator's files in deploy/: Kubernetes manifests that parse and hang together, container commands
that name real CLI commands and options, Dockerfiles that install extras pyproject.toml defines.
(No cluster and no docker here: these are the checks that need neither.)"""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
DOCKER = ROOT / "deploy" / "docker"
NAMESPACE = "edgeml"
WORKLOADS = {"Deployment", "StatefulSet"}

# Every command and flag a manifest names must exist in the CLI (nothing is pending).
PENDING: set[tuple[str, str | None]] = set()


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        with path.open() as f:
            docs += [(path.name, d) for d in yaml.safe_load_all(f) if d is not None]
    return docs


def _pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for _, doc in _documents():
        if doc["kind"] in WORKLOADS:
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def _clis() -> dict[str, click.Group]:
    from edgeml.fleet.cli import main as fleet
    from edgeml_agent.cli import main as agent

    return {"edgeml-fleet": fleet, "edgeml-agent": agent}


def _check_invocation(program: str, argv: list[str]) -> list[str]:
    """Problems with ``program argv`` (a command of that CLI, options of that command)."""
    group = _clis()[program]
    name = argv[0]
    command = group.commands.get(name)
    if command is None:
        return [] if (name, None) in PENDING else [f"{program} has no command {name!r}"]
    known = {opt for p in command.params for opt in getattr(p, "opts", [])}
    problems = []
    for arg in argv[1:]:
        flag = arg.split("=", 1)[0]
        if flag.startswith("--") and flag not in known and (name, flag) not in PENDING:
            problems.append(f"{program} {name} has no option {flag}")
    return problems


def _invocations(container: dict[str, Any]) -> Iterator[tuple[str, list[str]]]:
    command, args = container.get("command", []), container.get("args", [])
    if command and command[0] in _clis():
        yield command[0], [*command[1:], *args]
    elif command[:2] == ["sh", "-c"]:
        for script in args:
            for program, rest in re.findall(r"\b(edgeml-fleet|edgeml-agent) ([^;&|\n]*)", script):
                yield program, shlex.split(rest.replace('"$EDGEML_ADMIN_TOKEN"', "TOKEN"))


def test_every_manifest_parses_and_has_the_required_fields() -> None:
    docs = _documents()
    assert {d["kind"] for _, d in docs} >= {"Namespace", "Deployment", "StatefulSet", "Service", "ConfigMap", "Secret"}
    for name, doc in docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), name
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{name}: {doc['metadata']['name']}"
        if doc["kind"] in WORKLOADS:
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items(), doc["metadata"]["name"]


def test_workloads_run_unprivileged_with_resources() -> None:
    for name, pod in _pod_specs():
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for c in _containers(pod):
            assert c.get("image"), f"{name}/{c['name']}"
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, f"{name}/{c['name']}"
            if c in pod["containers"]:
                assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], f"{name}/{c['name']}"


def test_the_api_is_probed_on_healthz_and_every_service_selects_a_workload() -> None:
    docs = _documents()
    api = next(d for _, d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "edgeml-fleet-api")
    container = api["spec"]["template"]["spec"]["containers"][0]
    port_names = {p["name"] for p in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz" and container[probe]["httpGet"]["port"] in port_names
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for _, d in docs if d["kind"] in WORKLOADS]
    for _, doc in docs:
        if doc["kind"] == "Service":
            selector = doc["spec"]["selector"]
            assert any(selector.items() <= labels.items() for labels in pod_labels), doc["metadata"]["name"]
    stateful = [d for _, d in docs if d["kind"] == "StatefulSet"]
    services = {d["metadata"]["name"] for _, d in docs if d["kind"] == "Service"}
    assert all(s["spec"]["serviceName"] in services for s in stateful)


def test_referenced_secrets_and_config_maps_are_defined() -> None:
    docs = _documents()
    defined = {(d["kind"], d["metadata"]["name"]) for _, d in docs}
    text = yaml.safe_dump([d for _, d in docs])
    for ref in re.findall(r"secretKeyRef:\n\s+key: \S+\n\s+name: (\S+)", text):
        assert ("Secret", ref) in defined, ref
    for name, pod in _pod_specs():
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in defined, name
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in defined, name


def test_mosquitto_config_sets_explicit_queue_limits() -> None:
    conf = next(d for _, d in _documents() if d["kind"] == "ConfigMap")["data"]["mosquitto.conf"]
    settings = dict(line.split(None, 1) for line in conf.splitlines() if line and not line.startswith("#"))
    assert int(settings["max_queued_messages"]) >= 100_000 and int(settings["max_inflight_messages"]) > 0
    assert settings["allow_anonymous"] == "false" and "password_file" in settings and "acl_file" in settings


def test_container_commands_name_real_cli_commands_and_options() -> None:
    seen, problems = [], []
    for name, pod in _pod_specs():
        for c in _containers(pod):
            for program, argv in _invocations(c):
                seen.append((program, argv[0]))
                problems += [f"{name}/{c['name']}: {p}" for p in _check_invocation(program, argv)]
    assert problems == []
    assert {("edgeml-fleet", "serve"), ("edgeml-fleet", "ingest"), ("edgeml-fleet", "broker-config")} <= set(seen)


def test_the_invocation_check_catches_a_wrong_command_and_option() -> None:
    assert _check_invocation("edgeml-fleet", ["serve", "--port=1", "--no-such-flag"]) == [
        "edgeml-fleet serve has no option --no-such-flag"]
    assert _check_invocation("edgeml-fleet", ["serv"]) == ["edgeml-fleet has no command 'serv'"]


def _dockerfile(name: str) -> tuple[str, dict[str, str]]:
    text = (DOCKER / name).read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE))
    return text, args


@pytest.mark.parametrize(("name", "program", "extras"), [
    ("Dockerfile.fleet", "edgeml-fleet", {"fleet"}),
    ("Dockerfile.agent", "edgeml-agent", {"agent", "onnxruntime"}),
])
def test_dockerfiles_install_existing_extras_and_run_real_commands(name: str, program: str, extras: set[str]) -> None:
    text, args = _dockerfile(name)
    defined = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    installs = re.findall(r"edgeml-\*\.whl\)\[([^\]]+)\]", text)
    assert installs, f"{name} does not install the built wheel with extras"
    for spec in installs:
        wanted = {e.strip() for e in re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], spec).split(",")}
        assert wanted <= defined, f"{name}: extras {sorted(wanted - defined)} are not in pyproject.toml"
        assert wanted == extras
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) >= 2, "multi-stage"
    assert re.search(r"^USER (?!0|root)\S+", text, re.MULTILINE), "the image must not run as root"
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), f"{name} copies {path}, which the repository does not have"
    entrypoint = re.search(r'^ENTRYPOINT \["([^"]+)"\]', text, re.MULTILINE)
    cmd = re.search(r"^CMD (\[.*\])$", text, re.MULTILINE)
    assert entrypoint and entrypoint.group(1) == program and cmd
    assert _check_invocation(program, yaml.safe_load(cmd.group(1))) == []
