"""Render a kustomization with a real kustomize when there is one, else a small fallback.

The real one is ``kustomize build DIR`` or ``kubectl kustomize DIR``: neither is packaged
for Debian 12 nor shipped by a package on PyPI or npm, so a machine without kubectl gets
the fallback below. It implements exactly the kustomize features deploy/kubernetes uses
(``resources``, ``namespace``, ``images``, ``configMapGenerator`` with
``disableNameSuffixHash`` and ``options.labels``, inline JSON 6902 ``patches`` by kind
and name) and refuses any other key, so it can never silently render something else;
the manifest tests compare its output with the real kustomize's wherever both exist.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

KNOWN = {"apiVersion", "kind", "resources", "namespace", "images", "configMapGenerator",
         "generatorOptions", "patches"}
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}


def real_kustomize() -> list[str] | None:
    """The command of a real kustomize on this machine, if any."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def render(folder: Path, use_real: bool = True) -> list[dict[str, Any]]:
    """The objects of a kustomization folder."""
    command = real_kustomize() if use_real else None
    if command:
        out = subprocess.run([*command, str(folder)], check=True, capture_output=True, text=True,
                             timeout=120).stdout
        return [d for d in yaml.safe_load_all(out) if d]
    return build(folder)


def build(folder: Path) -> list[dict[str, Any]]:
    """The fallback: kustomize's semantics for the keys in :data:`KNOWN` only."""
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(spec) - KNOWN
    if unknown:
        raise ValueError(f"{folder}: the fallback renderer does not know {sorted(unknown)}")
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = folder / entry
        objects += build(path) if path.is_dir() else [
            d for d in yaml.safe_load_all(path.read_text()) if d]
    options = spec.get("generatorOptions", {})
    for generator in spec.get("configMapGenerator", []):
        if not options.get("disableNameSuffixHash"):
            raise ValueError("the fallback renderer needs generatorOptions.disableNameSuffixHash")
        _generate(objects, folder, generator)
    for patch in spec.get("patches", []):
        _patch(objects, patch)
    for image in spec.get("images", []):
        _image(objects, image)
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = spec["namespace"]
    return objects


def _generate(objects: list[dict[str, Any]], folder: Path, generator: dict[str, Any]) -> None:
    data = {}
    for item in generator.get("files", []):
        key, _, path = item.rpartition("=")
        data[key or Path(path).name] = (folder / path).read_text()
    options = generator.get("options", {})
    if set(options) - {"labels"}:
        raise ValueError(f"the fallback renderer does not know the options {sorted(options)}")
    behavior = generator.get("behavior", "create")
    found = [o for o in objects if o["kind"] == "ConfigMap"
             and o["metadata"]["name"] == generator["name"]]
    if behavior == "create":
        metadata: dict[str, Any] = {"name": generator["name"]}
        if "labels" in options:
            metadata["labels"] = dict(options["labels"])
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata,
                        "data": data})
    elif behavior == "merge" and len(found) == 1:
        found[0]["data"].update(data)
    elif behavior == "replace" and len(found) == 1:
        found[0]["data"] = data
    else:
        raise ValueError(f"configMapGenerator {generator['name']}: cannot {behavior}")


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def _patch(objects: list[dict[str, Any]], patch: dict[str, Any]) -> None:
    target = patch["target"]
    hits = [o for o in objects if o["kind"] == target["kind"]
            and o["metadata"]["name"] == target["name"]]
    if len(hits) != 1:
        raise ValueError(f"patch target {target} matches {len(hits)} objects")
    for op in yaml.safe_load(patch["patch"]):
        *parents, last = _pointer(op["path"])
        node: Any = hits[0]
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if op["op"] in ("add", "replace"):
            if isinstance(node, list):
                index = len(node) if last == "-" else int(last)
                node.insert(index, copy.deepcopy(op["value"])) if op["op"] == "add" else \
                    node.__setitem__(index, copy.deepcopy(op["value"]))
            else:
                node[last] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
        else:
            raise ValueError(f"the fallback renderer does not know the patch op {op['op']}")


def _image(objects: list[dict[str, Any]], image: dict[str, Any]) -> None:
    for obj in objects:
        pod = obj.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            name, _, tag = container["image"].partition(":")
            if name == image["name"]:
                name = image.get("newName", name)
                tag = image.get("newTag", tag)
                container["image"] = f"{name}:{tag}" if tag else name
