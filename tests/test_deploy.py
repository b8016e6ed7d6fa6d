"""deploy/: the Kubernetes manifests and the Helm chart's rendered templates validated offline against the
Kubernetes schemas (kubernetes-validate), the chart rendered by Helm's own engine (helm-python-sdk, Helm's Go
SDK behind ctypes), and the probes, scrape paths and commands they name checked against the real app and CLI."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from lokal.cli import app as cli_app
from lokal.server.app import create_app

DEPLOY = Path(__file__).parent.parent / "deploy"
K8S_VERSION = "1.30.0"
SEED_RESOURCES = {"requests": {"memory": "4Gi", "cpu": "2000m"}, "limits": {"memory": "8Gi", "cpu": "4000m"}}
# Custom resources have no schema in Kubernetes' own: checked by hand below.
CUSTOM_KINDS = {"ServiceMonitor", "Kustomization"}


def validate(document: dict) -> None:
    if document["kind"] in CUSTOM_KINDS:
        return
    kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def load_all(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


class _Runtime:  # create_app only needs a runtime to hang its routes on; nothing runs here
    settings = None
    residency_listeners: list = []


def app_routes() -> set[str]:
    return set(create_app(_Runtime()).openapi()["paths"])


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    documents = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in load_all(path.read_text()):
            documents[doc["metadata"]["name"] if doc["kind"] == "ConfigMap" else doc["kind"]] = doc
    return documents


def test_every_manifest_is_valid_against_the_kubernetes_schemas(manifests):
    assert {"Deployment", "Service", "PersistentVolumeClaim", "lokal-config", "lokal-deploy-config", "Secret",
            "HorizontalPodAutoscaler", "ServiceMonitor"} <= set(manifests)
    for document in manifests.values():
        validate(document)


def test_an_invalid_manifest_is_caught(manifests):
    """The validation is real: a wrong type in the Deployment fails it."""
    broken = yaml.safe_load(yaml.safe_dump(manifests["Deployment"]))
    broken["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)


def check_deployment(deployment: dict, routes: set[str]) -> None:
    spec = deployment["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert container["resources"] == SEED_RESOURCES
    assert container["livenessProbe"]["httpGet"]["path"] == "/api/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert {"/api/health", "/ready"} <= routes
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/data", "/tmp"} <= mounts  # the only writable places under a read-only root
    [pull] = spec["initContainers"]  # LOKAL_PRELOAD's models into the store before the server starts
    assert "lokal pull" in pull["command"][-1] and "$LOKAL_PRELOAD" in pull["command"][-1]
    assert pull["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_deployment_has_the_seeds_replicas_resources_probes_and_runs_non_root(manifests):
    assert manifests["Deployment"]["spec"]["replicas"] == 3
    check_deployment(manifests["Deployment"], app_routes())
    config = manifests["lokal-config"]["data"]
    assert config["LOKAL_MODELS"] == "/data/models" and config["LOKAL_HOST"].startswith("0.0.0.0:")
    from lokal.config import SETTINGS

    declared = {s.name for s in SETTINGS}
    unknown = set(config) - declared - {"LOKAL_KEYS_FILE"}  # the security issue's setting, once it lands
    assert not unknown, unknown


def test_the_autoscaler_uses_cpu_and_the_queue_depth_metric(manifests):
    metrics = manifests["HorizontalPodAutoscaler"]["spec"]["metrics"]
    assert {m["type"] for m in metrics} == {"Resource", "Pods"}
    assert [m["pods"]["metric"]["name"] for m in metrics if m["type"] == "Pods"] == ["lokal_queue_depth"]
    monitor = manifests["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics" and "/metrics" in app_routes()
    assert monitor["spec"]["selector"]["matchLabels"] == manifests["Service"]["metadata"]["labels"]


# ---- the Helm chart, rendered by Helm itself ------------------------------------------------------------


def render_chart(values: dict | None = None) -> list[dict]:
    import helm_python as helm
    with helm.Chart.load(str(DEPLOY / "helm" / "lokal")) as chart:
        rendered = chart.render(values or {}, name="prod", namespace="ai")
    documents = []
    for name, text in rendered.items():
        if name.endswith(".yaml"):
            documents.extend(load_all(text))
    return documents


def test_the_chart_renders_valid_manifests_with_the_defaults():
    documents = render_chart()
    kinds = sorted(doc["kind"] for doc in documents)
    assert kinds == sorted(["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PersistentVolumeClaim", "Secret",
                            "Service", "ServiceMonitor"])
    for document in documents:
        validate(document)
    [deployment] = [d for d in documents if d["kind"] == "Deployment"]
    check_deployment(deployment, app_routes())
    [hpa] = [d for d in documents if d["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["spec"]["minReplicas"] == 3
    assert any(m.get("pods", {}).get("metric", {}).get("name") == "lokal_queue_depth" for m in hpa["spec"]["metrics"])


def test_the_chart_values_switch_parts_off_and_on():
    documents = render_chart({"autoscaling": {"enabled": False}, "serviceMonitor": {"enabled": False},
                              "persistence": {"existingClaim": "shared-models"},
                              "keys": {"existingSecret": "my-keys"}, "settings": {"LOKAL_NUM_PARALLEL": 8}})
    for document in documents:
        validate(document)
    kinds = {doc["kind"] for doc in documents}
    assert kinds == {"ConfigMap", "Deployment", "Service"}
    [deployment] = [d for d in documents if d["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 3
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "shared-models"
    assert volumes["keys"]["secret"]["secretName"] == "my-keys"
    [config] = [d for d in documents if d["kind"] == "ConfigMap"]
    assert config["data"]["LOKAL_NUM_PARALLEL"] == "8"


# ---- the scrape config, the CI example, the Dockerfile ----------------------------------------------------


def test_the_prometheus_config_scrapes_paths_the_server_serves():
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    paths = {job["metrics_path"] for job in config["scrape_configs"]}
    assert paths == {"/metrics", "/api/metrics"} and paths <= app_routes()


def test_the_ci_example_uses_only_commands_lokal_has():
    workflow = yaml.safe_load((DEPLOY / "ci" / "deploy.yml").read_text())
    commands = {command.name for command in cli_app.registered_commands}
    used = set()
    for step in workflow["jobs"]["deploy"]["steps"]:
        used |= set(re.findall(r"(?m)^\s*lokal (\w[\w-]*)", step.get("run", "")))
    assert used and used <= commands, used - commands


def test_the_dockerfile_is_multi_stage_non_root_with_a_healthcheck_on_api_health():
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"(?m)^FROM ", text)
    assert len(stages) == 2 and "AS builder" in text and "COPY --from=builder /opt/lokal /opt/lokal" in text
    assert re.search(r"(?m)^USER 10001", text)
    assert re.search(r"HEALTHCHECK .*\n\s*CMD curl -fsS http://127\.0\.0\.1:11434/api/health", text)
    assert "RUN lokal-install /opt/lokal /src" in text  # the steps tests/test_deploy_docker.py runs
    assert "LOKAL_HOST=0.0.0.0:11434" in text


def test_the_init_container_pulls_the_preload_models_into_the_store(manifests, tmp_path):
    """Its shell command, run here with the real CLI: the models named in LOKAL_PRELOAD land in the store."""
    import os
    import subprocess
    import sys

    [pull] = manifests["Deployment"]["spec"]["template"]["spec"]["initContainers"]
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LOKAL_", "OLLAMA_"))}
    environ.update(LOKAL_PRELOAD="smollm2,smollm2:135m", LOKAL_MODELS=str(tmp_path / "models"),
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{environ.get('PATH', '')}")
    done = subprocess.run(pull["command"], env=environ, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    manifests_dir = tmp_path / "models" / "manifests" / "registry.ollama.ai" / "library" / "smollm2"
    assert sorted(p.name for p in manifests_dir.iterdir()) == ["135m", "latest"]
    environ["LOKAL_PRELOAD"] = "smollm2,not/a/valid/name/at/all"  # refused before any network
    assert subprocess.run(pull["command"], env=environ, capture_output=True, timeout=300).returncode != 0


def test_the_deployment_config_is_mounted_where_lokal_config_points_and_loads(manifests, tmp_path):
    """`lokal deploy --config`'s file, as every replica reads it: valid, and below the ConfigMap's variables."""
    from lokal.config import Settings

    settings_env = manifests["lokal-config"]["data"]
    path = Path(settings_env["LOKAL_CONFIG"])
    [mount] = [m for m in manifests["Deployment"]["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
               if m["name"] == "deploy-config"]
    assert str(path.parent) == mount["mountPath"]
    local = tmp_path / path.name
    local.write_text(manifests["lokal-deploy-config"]["data"][path.name])
    settings = Settings(environ={**settings_env, "LOKAL_CONFIG": str(local)})
    assert settings.source("LOKAL_NUM_PARALLEL") == "file" and settings.num_parallel == 4
    assert settings.source("LOKAL_HOST") == "LOKAL_HOST" and settings.host == ("0.0.0.0", 11434)


def test_the_chart_mounts_a_deployment_config_when_given(tmp_path):
    from lokal.config import Settings

    documents = render_chart({"deployConfig": {"deployment": {"model": "smollm2", "optimization": {"max_context": 2048}},
                                               "performance": {"parallel_requests": 2}}})
    for document in documents:
        validate(document)
    configs = {d["metadata"]["name"]: d for d in documents if d["kind"] == "ConfigMap"}
    settings_env = configs["prod-lokal"]["data"]
    local = tmp_path / "production.json"
    local.write_text(configs["prod-lokal-deploy"]["data"]["production.json"])
    settings = Settings(environ={**settings_env, "LOKAL_CONFIG": str(local)})
    assert settings.context_length == 2048 and settings.source("LOKAL_CONTEXT_LENGTH") == "file"
    # values.settings (LOKAL_NUM_PARALLEL "4") win over the file, as the environment does.
    assert settings.num_parallel == 4 and settings.source("LOKAL_NUM_PARALLEL") == "LOKAL_NUM_PARALLEL"
