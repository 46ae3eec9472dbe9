"""deploy/: the Kubernetes manifests fit together and match the server's stop timeline and CLI.

(The schema check itself is ``make deploy-check``, deploy/validate.py; it runs here too.)
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import yaml

from rewardserve.service.cli import parse_serve_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def manifests() -> dict[str, dict]:
    docs = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


def container() -> dict:
    return manifests()["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def test_every_manifest_validates_against_the_kubernetes_schema_and_the_crd_is_skipped_by_name():
    spec = importlib.util.spec_from_file_location("deploy_validate", DEPLOY / "validate.py")
    validate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(validate)
    checked, skipped, errors = validate.validate(sorted((DEPLOY / "k8s").glob("*.yaml")), validate.KUBERNETES_VERSION)
    assert errors == []
    assert {line.split(": ")[1] for line in checked} == {"Deployment/rewardserve", "Service/rewardserve",
                                                         "PodDisruptionBudget/rewardserve"}
    assert len(skipped) == 1 and "ServiceMonitor" in skipped[0]


def test_the_container_arguments_are_valid_serve_options():
    config = parse_serve_config(["serve", *container()["args"]])
    assert config.server.port == 50051 and config.server.metrics_port == 9400
    assert config.server.log_format == "json" and config.server.auth_token_file


def test_termination_grace_covers_the_whole_stop_timeline_and_liveness_outlasts_it():
    docs = manifests()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    server = parse_serve_config(["serve", *container()["args"]]).server
    pre_stop = container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    exit_s = 1  # the process exits within a second after the grace period
    timeline = pre_stop + server.drain_delay_s + server.grace_period_s + exit_s
    assert pod["terminationGracePeriodSeconds"] >= timeline + 3  # room before the kubelet's SIGKILL
    liveness = container()["livenessProbe"]
    # Health says NOT_SERVING from SIGTERM on: liveness must not kill a draining pod.
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > pod["terminationGracePeriodSeconds"]


def test_probes_ports_selectors_and_volumes_fit_together():
    docs = manifests()
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container()[probe]["grpc"]["port"] == ports["grpc"]  # health is open: no token needed
    startup = container()["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # the first compile takes minutes
    assert container()["resources"]["limits"]["nvidia.com/gpu"] == 1
    service, pdb, monitor = docs["Service"], docs["PodDisruptionBudget"], docs["ServiceMonitor"]
    assert service["spec"]["clusterIP"] == "None"  # headless: DNS lists every pod for client-side balancing
    for selector in (service["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"],
                     docs["Deployment"]["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert service_ports["grpc"]["targetPort"] == "grpc" and service_ports["metrics"]["targetPort"] == "metrics"
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports.keys()
    mounts = {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}
    args = " ".join(container()["args"])
    assert re.search(rf"--model={mounts['models']}/", args)
    assert re.search(rf"--auth-token-file={mounts['tokens']}/", args)
    env = {e["name"]: e["value"] for e in container()["env"]}
    assert env["TORCHINDUCTOR_CACHE_DIR"].startswith(mounts["compile-cache"])


def test_the_dockerfile_installs_with_the_script_ci_runs():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:[\w.-]+-runtime-", dockerfile, re.MULTILINE)
    assert "RUN /src/deploy/install.sh /opt/rewardserve" in dockerfile
    assert 'ENTRYPOINT ["rewardserve", "serve"]' in dockerfile
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    parse_serve_config(["serve", *yaml.safe_load(cmd.group(1))])  # the default arguments parse
