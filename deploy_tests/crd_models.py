"""Validates custom resources (KEDA, Prometheus Operator) against their published schemas.

kubernetes-validate bundles only the built-in kinds. For KEDA's ScaledObject and
TriggerAuthentication and the operator's PodMonitor and PrometheusRule, the npm packages
@kubernetes-models/keda and @kubernetes-models/prometheus-operator carry validators
generated from the projects' own API types (the types their CRDs are generated from):
types, required fields and enums. Those validators accept unknown fields, as the API
server's pruning would silently drop them, so a misspelt field (`minReplicas` for
`minReplicaCount`) would pass. `unknown_fields` closes that gap by walking the document
along the packages' TypeScript declarations, which list every field of every type.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy_tests.toolchain import npm_prefix, require_debian_tool, require_npm_package, run_tool

MODEL_PACKAGES = {
    "keda.sh": "@kubernetes-models/keda",
    "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
}
# Packages whose declarations the custom resources refer to (ObjectMeta, core types).
DECLARATION_PACKAGES = (*MODEL_PACKAGES.values(), "@kubernetes-models/apimachinery", "kubernetes-models")

_VALIDATE_SCRIPT = """
import { readFileSync } from "node:fs";
const packages = JSON.parse(process.argv[1]);
const documents = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const document of documents) {
  const [group, version] = document.apiVersion.split("/");
  try {
    const module = await import(`${packages[group]}/${group}/${version}/${document.kind}`);
    new module[document.kind](document).validate();
    results.push(null);
  } catch (error) {
    results.push(String(error && error.message ? error.message : error));
  }
}
process.stdout.write(JSON.stringify(results));
"""


def is_custom_resource(document: dict[str, Any]) -> bool:
    return document.get("apiVersion", "").split("/")[0] in MODEL_PACKAGES


def schema_errors(documents: list[dict[str, Any]]) -> list[str | None]:
    """One entry per document: None when it validates, else the validator's message."""
    node = require_debian_tool("node")
    for package in MODEL_PACKAGES.values():
        require_npm_package(package)
    result = run_tool(
        [node, "--input-type=module", "--eval", _VALIDATE_SCRIPT, json.dumps(MODEL_PACKAGES)],
        cwd=npm_prefix(),
        stdin=json.dumps(documents),
    )
    assert result.returncode == 0, f"node validator failed:\n{result.stderr}"
    return json.loads(result.stdout)


@dataclass(frozen=True)
class _Declaration:
    fields: dict[str, str]  # field name -> TypeScript type
    is_closed: bool  # False when a parent type could not be resolved: unknown fields allowed


_INTERFACE = re.compile(r"^export interface (\w+)(?: extends ([\w\s,.<>\"\[\]]+))? \{$")
_FIELD = re.compile(r'^    "([^"]+)"\??: (.*?);?$')
_ALIAS = re.compile(r"export type \{ (.+) \};")
_TYPE_ALIAS = re.compile(r"^export type (\w+) = (I\w+);$", re.MULTILINE)


def _parse_declarations(text: str) -> tuple[dict[str, tuple[dict[str, str], list[str]]], dict[str, str]]:
    """The interfaces a .d.ts file declares, and its exported names -> local names.

    A local name that is itself an alias of another type (`type IA = IB`) maps to IB.
    """
    interfaces: dict[str, tuple[dict[str, str], list[str]]] = {}
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        match = _INTERFACE.match(lines[index])
        index += 1
        if not match:
            continue
        name, parents = match.group(1), match.group(2)
        fields: dict[str, str] = {}
        while index < len(lines) and lines[index] != "}":
            field = _FIELD.match(lines[index])
            if field:
                fields[field.group(1)] = field.group(2)
                if field.group(2).endswith("{"):  # an inline map type: skip its body
                    depth = 1
                    while depth and index + 1 < len(lines):
                        index += 1
                        depth += lines[index].count("{") - lines[index].count("}")
            index += 1
        interfaces[name] = (fields, [parent.strip() for parent in parents.split(",")] if parents else [])
    type_aliases = dict(_TYPE_ALIAS.findall(text))
    aliases = {}
    for group in _ALIAS.findall(text):
        for pair in group.split(","):
            local, _, exported = pair.strip().partition(" as ")
            if exported:
                aliases[exported.strip()] = type_aliases.get(local.strip(), local.strip())
    return interfaces, aliases


@functools.lru_cache(maxsize=1)
def _declarations() -> dict[str, _Declaration]:
    raw: dict[str, tuple[dict[str, str], list[str]]] = {}
    renamed: dict[str, str] = {}  # exported name -> the declared type it stands for
    for package in DECLARATION_PACKAGES:
        for path in (npm_prefix() / "node_modules" / package).rglob("*.d.ts"):
            interfaces, aliases = _parse_declarations(path.read_text())
            for exported, local in aliases.items():
                if local in interfaces:
                    raw[exported] = interfaces[local]
                elif local != exported:
                    renamed[exported] = local
            for local, declaration in interfaces.items():
                raw.setdefault(local, declaration)

    resolved: dict[str, _Declaration] = {}

    def resolve(name: str) -> _Declaration | None:
        if name in resolved:
            return resolved[name]
        if name in renamed and name not in raw:
            target = resolve(renamed[name])
            if target is not None:
                resolved[name] = target
            return target
        if name not in raw:
            return None
        fields, parents = raw[name]
        merged, is_closed = dict(fields), True
        for parent in parents:
            if parent == "TypeMeta":  # apiVersion and kind, already declared as fields
                continue
            parent_declaration = resolve(parent)
            if parent_declaration is None:
                is_closed = False
            else:
                merged.update(parent_declaration.fields)
                is_closed = is_closed and parent_declaration.is_closed
        resolved[name] = _Declaration(merged, is_closed)
        return resolved[name]

    for name in [*raw, *renamed]:
        resolve(name)
    return resolved


def _element_type(type_name: str) -> str:
    while type_name.startswith("Array<") and type_name.endswith(">"):
        type_name = type_name[len("Array<") : -1]
    return type_name


def unknown_fields(document: dict[str, Any]) -> list[str]:
    """Paths of fields that the resource's declared types do not have."""
    group, _, version = document["apiVersion"].partition("/")
    package = MODEL_PACKAGES[group]
    root = Path(npm_prefix(), "node_modules", package, group, version, f"{document['kind']}.d.ts")
    assert root.exists(), f"{package} declares no {document['apiVersion']} {document['kind']}"
    declarations = _declarations()
    root_name = f"I{document['kind']}"
    interfaces, _ = _parse_declarations(root.read_text())
    assert root_name in interfaces, f"{root} does not declare {root_name}"
    problems: list[str] = []

    def walk(value: Any, type_name: str, path: str) -> None:
        type_name = _element_type(type_name)
        declaration = declarations.get(type_name)
        if isinstance(value, list):
            for position, item in enumerate(value):
                walk(item, type_name, f"{path}[{position}]")
            return
        if declaration is None or not isinstance(value, dict):
            return
        for key, item in value.items():
            if key not in declaration.fields:
                if declaration.is_closed:
                    problems.append(f"{path}.{key}")
                continue
            walk(item, declaration.fields[key], f"{path}.{key}")

    root_fields = interfaces[root_name][0]
    for key, item in document.items():
        if key not in root_fields:
            problems.append(key)
        else:
            walk(item, root_fields[key], key)
    return problems
