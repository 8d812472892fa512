"""Validate the deployment files: Kubernetes manifests and the Compose file.

Kubernetes: every kustomization under deploy/k8s is rendered (`kubectl kustomize`; without
kubectl, the files each one lists) and every resource is validated against the Kubernetes API
schema (kubernetes-validate, strict: an unknown or misspelt field fails). Then what a schema
cannot see, on the rendered example overlay: the API's grace period covers the preStop sleep
plus SHUTDOWN_GRACE_SECONDS plus a margin; the probes hit /readyz and /healthz; Services, the
PDB and the HPA point at pods that exist; containers run as non-root with resources; the
migration Job and what it needs carry the label of the first deploy step.

Compose: deploy/compose.yaml against the Compose Specification's JSON schema
(.ci/schemas/compose-spec.json, from github.com/compose-spec/compose-spec, Apache-2.0), then
dependencies that exist and the API's stop_grace_period against SHUTDOWN_GRACE_SECONDS.

Prometheus alerting rules: deploy/prometheus/alerts.yaml, parsed, and checked against the
series the service exports (.ci/alert_rules.py).

    python .ci/deploy_check.py
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from alert_rules import check_alert_rules

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
COMPOSE = ROOT / "deploy" / "compose.yaml"
COMPOSE_SCHEMA = Path(__file__).resolve().parent / "schemas" / "compose-spec.json"
# The oldest Kubernetes release the manifests must be valid for.
KUBERNETES_VERSION = "1.29"
EXAMPLE_OVERLAY = K8S / "overlays" / "example"
FIRST_STEP_LABEL = ("conduit/deploy-step", "migrate")
# Beyond preStop sleep + drain: the last responses' write-out and the process's exit.
GRACE_MARGIN_SECONDS = 5

Resource = dict[str, Any]


def kustomizations() -> list[Path]:
    return sorted(path.parent for path in K8S.rglob("kustomization.yaml"))


def render(directory: Path) -> list[Resource]:
    """The resources a kustomization produces."""
    if shutil.which("kubectl"):
        done = subprocess.run(
            ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise SystemExit(f"{directory.relative_to(ROOT)}: kustomize failed: {done.stderr}")
        return [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    # No kubectl: the listed files as they are (overlays' patches and images not applied).
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    resources: list[Resource] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        if path.is_dir():
            resources += render(path)
        else:
            resources += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return resources


def validate_schemas(directory: Path, resources: list[Resource]) -> list[str]:
    problems = []
    for resource in resources:
        name = f"{resource.get('kind')}/{resource.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(part) for part in exc.path)
            problems.append(f"{directory.relative_to(ROOT)}: {name}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{directory.relative_to(ROOT)}: {name}: unknown kind or apiVersion")
    return problems


def by_kind(resources: list[Resource], kind: str) -> dict[str, Resource]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def pod_specs(resources: list[Resource]) -> Iterator[tuple[str, Resource, Resource]]:
    """(name, pod template metadata, pod spec) of every workload."""
    for resource in resources:
        if resource["kind"] in ("Deployment", "Job"):
            template = resource["spec"]["template"]
            yield resource["metadata"]["name"], template["metadata"], template["spec"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def check_api_lifecycle(resources: list[Resource]) -> list[str]:
    """Grace period, preStop and probes of the API Deployment, against the ConfigMap."""
    api = by_kind(resources, "Deployment")["conduit-api"]["spec"]["template"]["spec"]
    config = by_kind(resources, "ConfigMap")["conduit"]["data"]
    container = api["containers"][0]
    drain = int(config["SHUTDOWN_GRACE_SECONDS"])
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    sleep = int(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0
    problems = []
    if sleep < 1:
        problems.append("api: preStop must sleep (endpoints are removed while it runs)")
    grace = api["terminationGracePeriodSeconds"]
    if grace < sleep + drain + GRACE_MARGIN_SECONDS:
        problems.append(
            f"api: terminationGracePeriodSeconds {grace} < preStop {sleep} + "
            f"SHUTDOWN_GRACE_SECONDS {drain} + margin {GRACE_MARGIN_SECONDS}"
        )
    wanted = {"startupProbe": "/healthz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in wanted.items():
        if container.get(probe, {}).get("httpGet", {}).get("path") != path:
            problems.append(f"api: {probe} must GET {path}")
    return problems


def check_references(resources: list[Resource]) -> list[str]:
    """Selectors and targets that point at something, pods that are locked down."""
    problems = []
    pods = {name: meta.get("labels", {}) for name, meta, _ in pod_specs(resources)}
    for kind in ("Service", "PodDisruptionBudget"):
        for name, resource in by_kind(resources, kind).items():
            selector = resource["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            if not any(selects(selector, labels) for labels in pods.values()):
                problems.append(f"{kind}/{name}: selects no pod")
    deployments = by_kind(resources, "Deployment")
    for name, hpa in by_kind(resources, "HorizontalPodAutoscaler").items():
        target = hpa["spec"]["scaleTargetRef"]["name"]
        if target not in deployments:
            problems.append(f"HorizontalPodAutoscaler/{name}: no Deployment {target}")
        elif "replicas" in deployments[target]["spec"] and hpa["spec"]["minReplicas"] > 1:
            # Fine on first apply; every later apply resets the HPA's count to this.
            problems.append(f"Deployment/{target}: drop spec.replicas, the HPA owns it")
    for name, _, spec in pod_specs(resources):
        if not spec.get("securityContext", {}).get("runAsNonRoot"):
            problems.append(f"{name}: runAsNonRoot missing")
        for container in spec["containers"]:
            resources_ = container.get("resources", {})
            if "requests" not in resources_ or "memory" not in resources_.get("limits", {}):
                problems.append(f"{name}/{container['name']}: requests and a memory limit")
    return problems


def check_first_step(resources: list[Resource]) -> list[str]:
    """`kubectl apply -l conduit/deploy-step=migrate` must bring all the Job needs."""
    key, value = FIRST_STEP_LABEL
    labelled = {
        (r["kind"], r["metadata"]["name"])
        for r in resources
        if r["metadata"].get("labels", {}).get(key) == value
    }
    needed = {("Job", "conduit-migrate"), ("ConfigMap", "conduit"), ("Secret", "conduit")}
    needed |= {("Namespace", r["metadata"]["name"]) for r in resources if r["kind"] == "Namespace"}
    return [f"{kind}/{name}: label {key}={value} missing" for kind, name in needed - labelled]


def check_kubernetes() -> list[str]:
    problems = []
    for directory in kustomizations():
        resources = render(directory)
        problems += validate_schemas(directory, resources)
        print(f"  {directory.relative_to(ROOT)}: {len(resources)} resources")
        if directory == EXAMPLE_OVERLAY and shutil.which("kubectl"):
            problems += check_api_lifecycle(resources)
            problems += check_references(resources)
            problems += check_first_step(resources)
    return problems


def seconds(duration: str) -> float:
    """A Compose duration ("1m30s", "45s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    return sum(float(number) * units[unit] for number, unit in parts)


def default_of(value: str) -> str:
    """The default of a `${NAME:-default}` interpolation, or the value itself."""
    match = re.fullmatch(r"\$\{[A-Z_]+:-([^}]*)\}", value)
    return match[1] if match else value


def check_compose() -> list[str]:
    compose = yaml.safe_load(COMPOSE.read_text())
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    problems = [
        f"compose: {'/'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(compose)
    ]
    services = compose.get("services", {})
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            if dependency not in services:
                problems.append(f"compose: {name} depends on unknown service {dependency}")
    api = services.get("api", {})
    drain = float(default_of(str(api.get("environment", {}).get("SHUTDOWN_GRACE_SECONDS", "0"))))
    grace = seconds(str(api.get("stop_grace_period", "10s")))
    if grace < drain + GRACE_MARGIN_SECONDS:
        problems.append(
            f"compose: api stop_grace_period {grace:g}s < SHUTDOWN_GRACE_SECONDS {drain:g}s"
            " + margin"
        )
    print(f"  deploy/compose.yaml: {len(services)} services")
    return problems


def main() -> int:
    """Check everything; print each problem; exit 1 if any."""
    problems = check_kubernetes() + check_compose() + check_alert_rules()
    for problem in problems:
        print(f"deploy check: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
