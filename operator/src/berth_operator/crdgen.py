"""Generate the BertTraining CustomResourceDefinition from the typed models.

    python -m berth_operator.crdgen            # rewrite crds/berth.dev_berttrainings.yaml
    python -m berth_operator.crdgen --check    # exit 1 with a diff when the file is stale
    python -m berth_operator.crdgen --stdout   # print it

Pydantic's JSON schema is turned into a *structural* OpenAPI v3 schema: `$ref`s inlined,
`Optional` unions collapsed (absent means unset), `int | str` quantities marked
`x-kubernetes-int-or-string`, factory defaults materialised (`training: {}` lets the API server
fill nested defaults), and `additionalProperties: false` dropped (the API server prunes unknown
fields instead). Only `spec.podTemplate`, a core PodTemplateSpec, preserves unknown fields.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from berth_operator import labels
from berth_operator.api import NAME_VALIDATIONS, BertTrainingSpec, BertTrainingStatus

CRD_FILE = f"{labels.GROUP}_{labels.PLURAL}.yaml"
DEFAULT_PATH = Path(__file__).resolve().parents[3] / "crds" / CRD_FILE

_DROP = {"title", "additionalProperties", "$defs"}
_CEL = "x-kubernetes-validations"

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {
        "name": "Workers",
        "type": "string",
        "jsonPath": ".status.workers.summary",
        "description": "Ready workers / workers",
    },
    {
        "name": "Step",
        "type": "string",
        "jsonPath": ".status.progress.summary",
        "description": "Optimizer step / total steps (while Preparing: input prepared)",
    },
    {
        "name": "%",
        "type": "integer",
        "jsonPath": ".status.progress.percent",
        "description": "Share of the planned steps done",
    },
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
    {"name": "Examples/s", "type": "number", "jsonPath": ".status.progress.examplesPerSecond"},
    {
        "name": "Metric",
        "type": "string",
        "jsonPath": ".status.validation.summary",
        "description": "The task's headline validation metric, e.g. f1 0.912",
    },
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts"},
    {
        "name": "Disruptions",
        "type": "integer",
        "jsonPath": ".status.disruptions",
        "description": "Group restarts after preemption, eviction, drain or node loss",
        "priority": 1,
    },
    {
        "name": "Queue",
        "type": "string",
        "jsonPath": ".status.queue.name",
        "description": "Kueue LocalQueue (label kueue.x-k8s.io/queue-name)",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _factory_defaults(model: type[BaseModel]) -> dict[str, Any]:
    """Wire defaults of fields built by a default_factory (JSON schema omits them)."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if field.default_factory is None:
            continue
        value = field.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            value = value.model_dump(by_alias=True, exclude_unset=True, mode="json")
        out[field.alias or name] = value
    return out


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Rewrite one pydantic JSON-schema node into a structural OpenAPI v3 node."""
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[1]]
        rules = [*target.get(_CEL, []), *node.get(_CEL, [])]  # the type's and the field's
        node = {**target, **node}  # the field's own description/default win
        if rules:
            node[_CEL] = rules
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        types = {o.get("type") for o in options}
        if types == {"integer", "string"}:
            node["x-kubernetes-int-or-string"] = True
        elif len(options) == 1:
            node = {**options[0], **node}
            return _structural(node, defs)
        else:
            raise ValueError(f"unsupported union in CRD schema: {options}")
    if node.get("default", 0) is None:
        del node["default"]
    if "exclusiveMinimum" in node:
        node["minimum"], node["exclusiveMinimum"] = node["exclusiveMinimum"], True
    if "exclusiveMaximum" in node:
        node["maximum"], node["exclusiveMaximum"] = node["exclusiveMaximum"], True
    if node.get("type") == "object" and "properties" not in node:
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            node["additionalProperties"] = _structural(extra, defs)
            return {k: v for k, v in node.items() if k not in {"title", "$defs"}}
        node["x-kubernetes-preserve-unknown-fields"] = True
    out = {k: v for k, v in node.items() if k not in _DROP}
    if "properties" in out:
        out["properties"] = {k: _structural(v, defs) for k, v in out["properties"].items()}
    if "items" in out:
        out["items"] = _structural(out["items"], defs)
    return out


_KEY_ORDER = (
    "type",
    "description",
    "enum",
    "format",
    "default",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "required",
    "properties",
    "items",
    "additionalProperties",
)


def _ordered(node: Any) -> Any:
    """Stable, readable key order: type and description first, extensions last."""
    if isinstance(node, list):
        return [_ordered(n) for n in node]
    if not isinstance(node, dict) or ("type" not in node and "description" not in node):
        return node
    rank = {k: i for i, k in enumerate(_KEY_ORDER)}
    keys = sorted(node, key=lambda k: (rank.get(k, len(rank)), k))
    return {
        k: (
            {p: _ordered(v) for p, v in node[k].items()} if k == "properties" else _ordered(node[k])
        )
        for k in keys
    }


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of one of the API models."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    for name, default in _factory_defaults(model).items():
        raw["properties"][name].setdefault("default", default)
    for def_name, definition in defs.items():
        cls = _nested_models(model).get(def_name)
        if cls is not None:
            for name, default in _factory_defaults(cls).items():
                definition["properties"][name].setdefault("default", default)
    schema: dict[str, Any] = _ordered(_structural(raw, defs))
    return schema


def _nested_models(model: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every BaseModel class reachable from `model`'s fields, by class name."""
    found: dict[str, type[BaseModel]] = {}
    stack: list[type[BaseModel]] = [model]
    while stack:
        cls = stack.pop()
        for field in cls.model_fields.values():
            for arg in _type_args(field.annotation):
                if (
                    isinstance(arg, type)
                    and issubclass(arg, BaseModel)
                    and (arg.__name__ not in found)
                ):
                    found[arg.__name__] = arg
                    stack.append(arg)
    return found


def _type_args(annotation: Any) -> list[Any]:
    args = list(getattr(annotation, "__args__", ()) or ())
    return [annotation, *[a for arg in args for a in _type_args(arg)]]


def build_crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition as a dict."""
    spec_schema = model_schema(BertTrainingSpec)
    spec_schema["properties"]["podTemplate"] = {
        "type": "object",
        "description": spec_schema["properties"]["podTemplate"]["description"],
        "x-kubernetes-preserve-unknown-fields": True,
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{labels.PLURAL}.{labels.GROUP}",
            "annotations": {"berth.dev/generated-by": "python -m berth_operator.crdgen"},
        },
        "spec": {
            "group": labels.GROUP,
            "names": {
                "kind": labels.KIND,
                "listKind": f"{labels.KIND}List",
                "plural": labels.PLURAL,
                "singular": labels.SINGULAR,
                "shortNames": list(labels.SHORT_NAMES),
                "categories": list(labels.CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": labels.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "BertTraining trains a BERT model with TensorFlow "
                            "across worker pods (MultiWorkerMirroredStrategy).",
                            "required": ["spec"],
                            _CEL: NAME_VALIDATIONS,
                            "properties": {
                                "apiVersion": {
                                    "type": "string",
                                    "description": "apiVersion: versioned schema of this object.",
                                },
                                "kind": {
                                    "type": "string",
                                    "description": "kind: REST resource of this object.",
                                },
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": model_schema(BertTrainingStatus),
                            },
                        }
                    },
                }
            ],
        },
    }


def render() -> str:
    header = (
        "# Generated by `python -m berth_operator.crdgen` from berth_operator.api; do not edit.\n"
    )
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100, allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m berth_operator.crdgen",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--check", action="store_true", help="fail with a diff when stale")
    parser.add_argument("--stdout", action="store_true", help="print instead of writing")
    parser.add_argument("--output", type=Path, default=DEFAULT_PATH, help="CRD file to write")
    args = parser.parse_args(argv)
    text = render()
    if args.stdout:
        sys.stdout.write(text)
        return 0
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current == text:
            return 0
        sys.stdout.writelines(
            difflib.unified_diff(
                current.splitlines(keepends=True),
                text.splitlines(keepends=True),
                str(args.output),
                "generated",
            )
        )
        print(f"{args.output} is stale: run `python -m berth_operator.crdgen`", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
