"""Renders deploy/k8s's overlays as ``kubectl kustomize`` does, with no kustomize binary.

Only what deploy/k8s uses: ``resources`` (files and folders), ``namespace``, ``namePrefix``,
``labels`` (with ``includeSelectors``), ``images``, ``patches`` (strategic merge, list items
merged by their key), ``configMapGenerator`` and ``secretGenerator`` (named with the hash
suffix kustomize gives them, and every reference to them renamed). A kustomization that uses
anything else raises: it is noticed, never rendered wrong. Where kubectl is installed,
tests/test_deploy.py checks this rendering against its own.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["render"]

KNOWN = frozenset(
    {
        "apiVersion",
        "kind",
        "resources",
        "namespace",
        "namePrefix",
        "labels",
        "images",
        "patches",
        "configMapGenerator",
        "secretGenerator",
    }
)
# The list fields a strategic merge patch merges item by item, and the key it matches on.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}
WORKLOADS = frozenset({"Deployment", "StatefulSet", "DaemonSet"})


@dataclass
class Resource:
    doc: dict[str, Any]
    original: str  # its name before any prefix: references in the manifests use it
    suffix: str = ""  # a generated resource's hash


def render(folder: Path) -> list[dict[str, Any]]:
    resources = _build(folder)
    final = {}
    for resource in resources:
        if resource.suffix:
            resource.doc["metadata"]["name"] += "-" + resource.suffix
        final[resource.doc["kind"], resource.original] = resource.doc["metadata"]["name"]
    for resource in resources:
        _rename_references(resource.doc, final)
    return [resource.doc for resource in resources]


def _build(folder: Path) -> list[Resource]:
    kustomization: dict[str, Any] = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KNOWN
    if unknown:
        raise NotImplementedError(f"{folder}: {sorted(unknown)} (tests/kustomize.py renders no such field)")
    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = folder / entry
        if path.is_dir():
            resources += _build(path)
        else:
            resources += [
                Resource(doc, doc["metadata"]["name"]) for doc in yaml.safe_load_all(path.read_text())
            ]
    for generator in kustomization.get("configMapGenerator", []):
        resources.append(_generated("ConfigMap", folder, generator))
    for generator in kustomization.get("secretGenerator", []):
        resources.append(_generated("Secret", folder, generator))
    for patch in kustomization.get("patches", []):
        if set(patch) != {"path"}:
            raise NotImplementedError(f"{folder}: a patch with {sorted(patch)}")
        patch_doc = yaml.safe_load((folder / patch["path"]).read_text())
        [target] = [
            resource.doc
            for resource in resources
            if (resource.doc["kind"], resource.doc["metadata"]["name"])
            == (patch_doc["kind"], patch_doc["metadata"]["name"])
        ]
        _merge(target, patch_doc)
    for resource in resources:
        _transform(resource.doc, kustomization)
    return resources


def _generated(kind: str, folder: Path, generator: dict[str, Any]) -> Resource:
    if set(generator) - {"name", "files", "literals", "envs"}:
        raise NotImplementedError(f"{folder}: a generator with {sorted(generator)}")
    data: dict[str, str] = {}
    for name in generator.get("files", []):
        data[Path(name).name] = (folder / name).read_text()
    pairs = list(generator.get("literals", []))
    for name in generator.get("envs", []):
        lines = (folder / name).read_text().splitlines()
        pairs += [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    for pair in pairs:
        key, value = pair.split("=", 1)
        data[key.strip()] = value
    doc: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": {"name": generator["name"]}}
    # kustomize hashes the kind, the data and an empty name (api/hasher), as Go's json.Marshal writes it.
    hashed: dict[str, Any] = {"kind": kind, "name": "", "data": data}
    if kind == "Secret":
        data = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
        hashed = {"kind": kind, "type": "Opaque", "name": "", "data": data}
        doc["type"] = "Opaque"
    doc["data"] = data
    encoded = json.dumps(hashed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escape in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        encoded = encoded.replace(char, escape)
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:10]
    return Resource(doc, generator["name"], digest.translate(str.maketrans("013ae", "ghkmt")))


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        elif key in MERGE_KEYS and isinstance(target.get(key), list):
            merge_key = MERGE_KEYS[key]
            existing = {item[merge_key]: item for item in target[key]}
            new = []
            for item in value:
                if item[merge_key] in existing:
                    _merge(existing[item[merge_key]], item)
                else:
                    new.append(copy.deepcopy(item))
            target[key] = new + target[key]  # kustomize puts the patch's new items first
        else:
            target[key] = copy.deepcopy(value)


def _transform(doc: dict[str, Any], kustomization: dict[str, Any]) -> None:
    kind, metadata = doc["kind"], doc["metadata"]
    if "namespace" in kustomization and kind != "Namespace":
        metadata["namespace"] = kustomization["namespace"]
    if kind != "Namespace":
        metadata["name"] = kustomization.get("namePrefix", "") + metadata["name"]
    for labels in kustomization.get("labels", []):
        if set(labels) - {"pairs", "includeSelectors"}:
            raise NotImplementedError(f"labels with {sorted(labels)}")
        pairs = labels["pairs"]
        metadata.setdefault("labels", {}).update(pairs)
        if not labels.get("includeSelectors"):
            continue
        spec = doc.get("spec", {})
        if kind == "Service":
            spec.setdefault("selector", {}).update(pairs)
        elif kind == "PodDisruptionBudget":
            spec["selector"].setdefault("matchLabels", {}).update(pairs)
        elif kind in WORKLOADS:
            spec["selector"].setdefault("matchLabels", {}).update(pairs)
            spec["template"]["metadata"].setdefault("labels", {}).update(pairs)
            for claim in spec.get("volumeClaimTemplates", []):
                claim["metadata"].setdefault("labels", {}).update(pairs)
    if kind in WORKLOADS:
        for container in doc["spec"]["template"]["spec"]["containers"]:
            for image in kustomization.get("images", []):
                name, _, _ = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image['newTag']}"


def _rename_references(doc: dict[str, Any], final: dict[tuple[str, str], str]) -> None:
    if doc["kind"] not in WORKLOADS:
        return
    spec = doc["spec"]
    if "serviceName" in spec:
        spec["serviceName"] = final.get(("Service", spec["serviceName"]), spec["serviceName"])
    pod = spec["template"]["spec"]

    def rename(holder: dict[str, Any], field: str, kind: str) -> None:
        holder[field] = final.get((kind, holder[field]), holder[field])

    for volume in pod.get("volumes", []):
        if "configMap" in volume:
            rename(volume["configMap"], "name", "ConfigMap")
        if "secret" in volume:
            rename(volume["secret"], "secretName", "Secret")
        if "persistentVolumeClaim" in volume:
            rename(volume["persistentVolumeClaim"], "claimName", "PersistentVolumeClaim")
    for container in pod["containers"]:
        for variable in container.get("env", []):
            source = variable.get("valueFrom", {})
            if "configMapKeyRef" in source:
                rename(source["configMapKeyRef"], "name", "ConfigMap")
            if "secretKeyRef" in source:
                rename(source["secretKeyRef"], "name", "Secret")
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                rename(source["configMapRef"], "name", "ConfigMap")
            if "secretRef" in source:
                rename(source["secretRef"], "name", "Secret")
