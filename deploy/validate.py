"""Validate deploy/k8s/*.yaml offline against the Kubernetes schemas (``make deploy-check``).

Every document is checked with kubernetes-validate (schemas ship inside the PyPI package, no
cluster or network needed) in strict mode: unknown fields are errors. Custom resources whose
schema is not vendored (the Prometheus Operator's ServiceMonitor) are skipped by that check,
explicitly and by name; tests/deploy/test_deploy_manifests.py checks how the documents fit
together (selectors, ports, probes, the stop timeline).

    python deploy/validate.py [--kubernetes-version 1.33.0] [FILE...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import kubernetes_validate
import yaml

K8S_DIR = Path(__file__).resolve().parent / "k8s"
KUBERNETES_VERSION = "1.33.0"  # its schema has gRPC probes and the preStop sleep action
UNVENDORED_CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def documents(paths: list[Path]) -> list[tuple[Path, dict]]:
    """(file, document) for every non-empty YAML document of ``paths``."""
    found = []
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((path, doc))
    return found


def validate(paths: list[Path], version: str) -> tuple[list[str], list[str], list[str]]:
    """(checked, skipped, errors): one line per document."""
    checked, skipped, errors = [], [], []
    for path, doc in documents(paths):
        name = f"{path.name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if (doc.get("apiVersion"), doc.get("kind")) in UNVENDORED_CRDS:
            skipped.append(f"{name} (custom resource; schema not vendored)")
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            errors.append(f"{name}: {where}: {exc.message}")
        except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as exc:
            errors.append(f"{name}: {exc.message}")
        else:
            checked.append(name)
    return checked, skipped, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-version", default=KUBERNETES_VERSION)
    parser.add_argument("files", nargs="*", type=Path)
    args = parser.parse_args(argv)
    paths = args.files or sorted(K8S_DIR.glob("*.yaml"))
    checked, skipped, errors = validate(paths, args.kubernetes_version)
    for line in checked:
        print(f"valid (Kubernetes {args.kubernetes_version} schema, strict): {line}")
    for line in skipped:
        print(f"SKIPPED schema check: {line}")
    for line in errors:
        print(f"INVALID: {line}", file=sys.stderr)
    if not checked:
        print("INVALID: no manifest was checked", file=sys.stderr)
        return 1
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
