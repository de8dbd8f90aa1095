"""deploy/k8s: the base and the production overlay render, validate offline, and keep their
promises (grace above the worker's, probes on the metrics port, non-root, a pinned image)."""

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from paylinks.jobs import layout
from paylinks.worker.config import WorkerConfig

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["base", "production"]
# The oldest Kubernetes the manifests are for (CronJob timeZone is GA from 1.27).
KUBERNETES_VERSION = "1.30"
# KEDA's own CRDs (v2.20.2, Apache-2.0): kubernetes-validate knows only built-in kinds.
CRDS = Path(__file__).resolve().parent / "k8s_schemas"

Manifest = dict[str, Any]


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        # On this project's machines kubectl comes installed; CI must not pass without it.
        if os.environ.get("CI"):
            pytest.fail("kubectl is not on PATH: deploy/k8s was not rendered")
        pytest.skip("kubectl is not on PATH: deploy/k8s was not rendered")
    return found


def render(overlay: str) -> list[Manifest]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(K8S / overlay)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def manifests(request: pytest.FixtureRequest) -> list[Manifest]:
    return render(request.param)


@pytest.fixture(scope="module")
def production() -> list[Manifest]:
    return render("production")


def closed(schema: Any) -> Any:
    """The schema with unknown fields refused, as the API server's strict field validation
    does (a CRD's schema leaves them open because the server prunes them)."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: closed(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_schemas() -> dict[tuple[str, str], Any]:
    """(apiVersion, kind) -> the CRD's openAPIV3Schema, closed, with metadata left to Kubernetes."""
    schemas = {}
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            schema = closed(version["schema"]["openAPIV3Schema"])
            schema["properties"]["metadata"] = {"type": "object"}
            api_version = f"{crd['spec']['group']}/{version['name']}"
            schemas[api_version, crd["spec"]["names"]["kind"]] = schema
    return schemas


def validate(manifest: Manifest, crds: dict[tuple[str, str], Any]) -> None:
    crd = crds.get((manifest["apiVersion"], manifest["kind"]))
    if crd is not None:
        jsonschema.validate(manifest, crd)
    else:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def one(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} in the render"
    return found[0]


def worker(manifests: list[Manifest]) -> Manifest:
    return one(manifests, "Deployment", "paylinks-worker")


def billing(manifests: list[Manifest]) -> Manifest:
    return one(manifests, "CronJob", "paylinks-nightly-billing")


def pod_specs(manifests: list[Manifest]) -> list[Manifest]:
    return [
        worker(manifests)["spec"]["template"]["spec"],
        billing(manifests)["spec"]["jobTemplate"]["spec"]["template"]["spec"],
    ]


def settings(manifests: list[Manifest]) -> dict[str, str]:
    data: dict[str, str] = one(manifests, "ConfigMap", "paylinks-settings")["data"]
    return data


def test_every_object_is_valid_against_the_kubernetes_schemas(manifests: list[Manifest]) -> None:
    crds = crd_schemas()
    kinds = {(m["apiVersion"], m["kind"]) for m in manifests}
    assert ("keda.sh/v1alpha1", "ScaledObject") in kinds
    for manifest in manifests:
        validate(manifest, crds)


def test_an_unknown_field_fails_validation() -> None:
    """The validation is strict: a misspelt field is an error, not silently dropped."""
    crds = crd_schemas()
    deployment = worker(render("base"))
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 40
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment, crds)
    scaler = one(render("base"), "ScaledObject", "paylinks-worker")
    scaler["spec"]["maxReplicas"] = 4
    with pytest.raises(jsonschema.ValidationError):
        validate(scaler, crds)


def test_the_pod_outlives_the_workers_shutdown_grace(manifests: list[Manifest]) -> None:
    configured = settings(manifests).get("PAYLINKS_SHUTDOWN_GRACE")
    grace = int(configured) if configured else WorkerConfig.model_fields["shutdown_grace"].default
    period = worker(manifests)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert period > grace


def test_probes_and_scraping_point_at_the_metrics_port(manifests: list[Manifest]) -> None:
    port = int(settings(manifests)["PAYLINKS_METRICS_PORT"])
    template = worker(manifests)["spec"]["template"]
    (container,) = template["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == port
    probes = {
        kind: container[kind]["httpGet"]
        for kind in ("livenessProbe", "readinessProbe", "startupProbe")
    }
    assert {kind: (p["port"], p["path"]) for kind, p in probes.items()} == {
        "livenessProbe": ("metrics", "/healthz"),
        "readinessProbe": ("metrics", "/readyz"),
        "startupProbe": ("metrics", "/healthz"),
    }
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    assert annotations["prometheus.io/path"] == "/metrics"


def test_every_pod_runs_as_a_user_with_a_read_only_root(manifests: list[Manifest]) -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    image_user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE)
    assert image_user, "the image's USER must be numeric for runAsNonRoot"
    for spec in pod_specs(manifests):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert str(pod["runAsUser"]) == image_user[1] != "0"
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]]


def test_settings_come_from_the_configmap_and_the_secret(manifests: list[Manifest]) -> None:
    secret = one(manifests, "Secret", "paylinks-secrets")["stringData"]
    assert {"REDIS_URL", "CONOMY_API_KEY", "CONOMY_CLIENT_ID", "CONOMY_CLIENT_SECRET"} <= set(
        secret
    )
    # Placeholders only: a real credential never lands in the repository.
    assert all("REPLACE-ME" in value for value in secret.values())
    assert not {"REDIS_URL", "CONOMY_API_KEY", "CONOMY_CLIENT_SECRET"} & set(settings(manifests))
    names = {(m["kind"], m["metadata"]["name"]) for m in manifests}
    for spec in pod_specs(manifests):
        for container in spec["containers"]:
            refs = {
                (
                    "ConfigMap" if "configMapRef" in ref else "Secret",
                    next(iter(ref.values()))["name"],
                )
                for ref in container["envFrom"]
            }
            assert refs == {("ConfigMap", "paylinks-settings"), ("Secret", "paylinks-secrets")}
            assert refs <= names


def test_the_fleet_scales_on_arqs_queue(manifests: list[Manifest]) -> None:
    scaler = one(manifests, "ScaledObject", "paylinks-worker")["spec"]
    assert scaler["scaleTargetRef"]["name"] == worker(manifests)["metadata"]["name"]
    (trigger,) = scaler["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == layout.QUEUE
    auth = one(manifests, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["key"] in one(manifests, "Secret", ref["name"])["stringData"]
    budget = one(manifests, "PodDisruptionBudget", "paylinks-worker")["spec"]
    labels = worker(manifests)["spec"]["template"]["metadata"]["labels"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()


def test_the_nightly_run_enqueues_a_mounted_file_and_waits(manifests: list[Manifest]) -> None:
    job = billing(manifests)
    spec = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    args = container["args"]
    assert args[:2] == ["enqueue", "--wait"]
    path = Path(args[-1])
    mounts = {Path(m["mountPath"]): m["name"] for m in container["volumeMounts"]}
    volume = next(v for v in spec["volumes"] if v["name"] == mounts[path.parent])
    if "configMap" in volume:
        data = one(manifests, "ConfigMap", volume["configMap"]["name"])["data"]
        assert path.name in data
    else:
        claim = volume["persistentVolumeClaim"]["claimName"]
        one(manifests, "PersistentVolumeClaim", claim)
    assert job["spec"]["concurrencyPolicy"] == "Forbid"


def test_production_pins_every_image(production: list[Manifest]) -> None:
    for spec in pod_specs(production):
        for container in spec["containers"]:
            image = container["image"]
            name, _, tag = image.rpartition(":")
            assert "@sha256:" in image or (name and "/" not in tag and tag != "latest"), image
    assert {m["metadata"].get("namespace") for m in production} == {"paylinks"}
