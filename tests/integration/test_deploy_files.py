"""deploy/: the Dockerfile, compose.yaml and the Kubernetes manifests are checked without
Docker or a cluster: they parse, hold the kinds and fields an operator relies on (non-root,
probes, resources, a one-shot migration the workers wait for, a disruption budget), their
probes answer on the real app, their commands are real ``keyplane`` commands, and every
``KEYPLANE_*`` variable they set is a real setting with a valid value."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx2
import pytest
import typer
import yaml
from typer.testing import CliRunner

from keyplane.cli.main import app as cli_app
from keyplane.config import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"


def manifests() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            found[doc["kind"]] = doc
    return found


def is_cli_command(args: list[str]) -> bool:
    """Parses ``keyplane <args>`` the way the CLI would, without running it: a command (not a
    group), and options it has (``--help`` last: parsing fails first on an unknown option)."""
    command = typer.main.get_command(cli_app)
    rest = list(args)
    while hasattr(command, "get_command"):  # a group: the next word names a command
        if not rest:
            return False
        sub = command.get_command(typer.Context(command), rest[0])
        if sub is None:
            return False
        command, rest = sub, rest[1:]
    return CliRunner().invoke(cli_app, [*args, "--help"]).exit_code == 0


def dockerfile() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def pod_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return spec["template"]["spec"]["containers"]  # type: ignore[no-any-return]


def test_the_cli_check_tells_real_commands_from_invented_ones() -> None:
    assert is_cli_command(["serve", "--host", "0.0.0.0", "--no-migrate"])
    assert is_cli_command(["db", "upgrade"])
    assert not is_cli_command(["serve", "--no-such-option"])
    assert not is_cli_command(["db", "migrate"])
    assert not is_cli_command(["db"])


def test_the_image_is_slim_non_root_and_runs_a_real_command() -> None:
    lines = dockerfile()
    froms = [v for k, v in lines if k == "FROM"]
    assert froms and all(f.startswith("python:3.11-slim") for f in froms)
    assert any(k == "RUN" and "pip install" in v and v.rstrip().endswith(" .") for k, v in lines)
    users = [v for k, v in lines if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    entry = json.loads(next(v for k, v in lines if k == "ENTRYPOINT"))
    cmd = json.loads(next(v for k, v in lines if k == "CMD"))
    assert entry == ["keyplane"] and is_cli_command(cmd)
    assert cmd[:3] == ["serve", "--host", "0.0.0.0"]
    health = next(v for k, v in lines if k == "HEALTHCHECK")
    assert "http://127.0.0.1:8080/healthz" in health
    assert "--port" in cmd and cmd[cmd.index("--port") + 1] == "8080"


def test_compose_runs_two_workers_after_one_migration_on_postgres_and_redis() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert is_cli_command(services["migrate"]["command"])
    workers = [s for s in services.values()
               if s.get("command", [None])[0] == "serve"]
    assert len(workers) == 2
    for worker in workers:
        assert is_cli_command(worker["command"]) and "--no-migrate" in worker["command"]
        assert worker["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert worker["env_file"] == "keyplane.env"  # the pepper: never in compose.yaml
        assert worker["environment"]["KEYPLANE_REDIS_URL"].startswith("redis://redis:")
    upstream = (DEPLOY / "nginx.conf").read_text()
    names = [n for n, s in services.items() if s in workers]
    assert all(f"server {n}:8080" in upstream for n in names)
    assert "KEYPLANE_PEPPERS" not in (DEPLOY / "compose.yaml").read_text()


def test_the_kubernetes_manifests_hold_what_an_operator_relies_on() -> None:
    found = manifests()
    assert set(found) == {"Deployment", "Job", "PodDisruptionBudget", "Service", "Secret",
                          "ConfigMap", "Kustomization"}
    deploy, job, pdb, service = (found[k] for k in ("Deployment", "Job",
                                                     "PodDisruptionBudget", "Service"))
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < deploy["spec"]["replicas"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    job_labels = job["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= job_labels.items()  # no traffic to it

    (container,) = pod_containers(deploy["spec"])
    assert is_cli_command(container["args"]) and "--no-migrate" in container["args"]
    port = container["args"][container["args"].index("--port") + 1]
    assert container["ports"][0]["containerPort"] == int(port)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == container["ports"][0]["name"]
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    (migrate,) = pod_containers(job["spec"])
    assert migrate["args"] == ["db", "upgrade"] and is_cli_command(migrate["args"])
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")

    for workload in (deploy, job):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= set(c["resources"]["requests"])
            refs = [e.get("secretRef", {}).get("name") for e in c["envFrom"]]
            assert found["Secret"]["metadata"]["name"] in refs  # the pepper from the Secret
    listed = set(found["Kustomization"]["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml",
                                                             "secret.example.yaml"}


def env_settings() -> dict[str, dict[str, str]]:
    """Every KEYPLANE_* variable each deploy file sets, by file."""
    found: dict[str, dict[str, str]] = {}
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        found[f"compose:{name}"] = dict(service.get("environment") or {})
    k8s = manifests()
    found["configmap"] = k8s["ConfigMap"]["data"]
    found["secret"] = k8s["Secret"]["stringData"]
    for path in DEPLOY.glob("*.env.example"):
        found[path.name] = dict(
            line.split("=", 1) for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#"))
    found["Dockerfile"] = dict(re.findall(r"(KEYPLANE_\w+)=(\S+)", (DEPLOY / "Dockerfile")
                                          .read_text()))
    return {where: {k: str(v) for k, v in env.items() if k.startswith("KEYPLANE_")}
            for where, env in found.items()}


def test_every_variable_the_files_set_is_a_real_setting_with_a_valid_value() -> None:
    everything = env_settings()
    assert sum(len(v) for v in everything.values()) >= 10
    for where, env in everything.items():
        values = {k.removeprefix("KEYPLANE_").lower(): v for k, v in env.items()}
        unknown = set(values) - set(Settings.model_fields)
        assert not unknown, (where, unknown)
        if "peppers" in values:
            values["peppers"] = "p1:" + "A" * 43 + "="
        Settings(**values)  # every value is valid (CIDRs, numbers, URLs)


def test_invented_settings_are_caught() -> None:
    assert "no_such_setting" not in Settings.model_fields
    with pytest.raises(ValueError):
        Settings(trusted_proxies="10.0.0.1/8")  # type: ignore[arg-type]


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_the_probes_answer_on_the_real_app(http: httpx2.Client) -> None:
    deploy = manifests()["Deployment"]
    (container,) = pod_containers(deploy["spec"])
    health = next(v for k, v in dockerfile() if k == "HEALTHCHECK")
    paths = {container["readinessProbe"]["httpGet"]["path"],
             container["livenessProbe"]["httpGet"]["path"],
             re.search(r"http://127\.0\.0\.1:\d+(/\w+)", health).group(1)}  # type: ignore[union-attr]
    assert paths == {"/readyz", "/healthz"}
    for path in paths:
        assert http.get(path).status_code == 200, path
