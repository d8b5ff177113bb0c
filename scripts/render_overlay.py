#!/usr/bin/env python3
"""Renders a Kustomize overlay of deploy/ offline, for validation and scanning in CI.

Supports what our overlays use: `resources` (files, or a directory with its own
kustomization.yaml) and `patches` with a path and a kind/name target, applied as a strategic
merge: mappings merge key by key, lists of mappings merge item by item on `name`, other lists
and scalars are replaced. Usage: render_overlay.py DIR > rendered.yaml
"""
import os
import sys

import yaml


def merge(base, patch):
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base[k], v) if k in base else v
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(i, dict) and "name" in i for i in base + patch):
        out = [dict(i) for i in base]
        for item in patch:
            match = [n for n, b in enumerate(out) if b["name"] == item["name"]]
            if match:
                out[match[0]] = merge(out[match[0]], item)
            else:
                out.append(item)
        return out
    return patch


def render(directory):
    with open(os.path.join(directory, "kustomization.yaml")) as f:
        kust = yaml.safe_load(f)
    docs = []
    for res in kust.get("resources", []):
        path = os.path.join(directory, res)
        if os.path.isdir(path):
            docs.extend(render(path))
        else:
            with open(path) as f:
                docs.extend(d for d in yaml.safe_load_all(f) if d)
    for patch in kust.get("patches", []):
        with open(os.path.join(directory, patch["path"])) as f:
            body = yaml.safe_load(f)
        target = patch["target"]
        hits = [n for n, d in enumerate(docs) if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]]
        if not hits:
            sys.exit(f"patch {patch['path']}: no {target['kind']}/{target['name']}")
        for n in hits:
            docs[n] = merge(docs[n], body)
    if "namespace" in kust:
        for d in docs:
            if d["kind"] != "Namespace":
                d["metadata"]["namespace"] = kust["namespace"]
    return docs


if __name__ == "__main__":
    yaml.safe_dump_all(render(sys.argv[1]), sys.stdout, sort_keys=False)
