"""Read and validate a BertTraining manifest without a cluster, as the API server would.

Validation runs the same typed models the CRD is generated from, then evaluates the CRD's own
CEL rules (`x-kubernetes-validations`, taken from the generated schema) on metadata.name and
the defaulted spec, so `berth validate` rejects what `kubectl apply` would reject, with the same
field-named messages. Transition rules (those using `oldSelf`) need an old object and are skipped.

    >>> m = parse_manifest({"apiVersion": "berth.dev/v1alpha1", "kind": "BertTraining",
    ...     "metadata": {"name": "t"}, "spec": {"vocabulary": "v.txt", "data": {"train": "d"},
    ...     "output": {"dir": "o"}, "workers": 2, "training": {"globalBatchSize": 3},
    ...     "checkpoint": {"dir": "c"}}})
    Traceback (most recent call last):
    ...
    berth_operator.local.manifest.ManifestError: spec.training.globalBatchSize: must be \
divisible by workers * training.gradientAccumulationSteps
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import celpy
import yaml
from pydantic import ValidationError

from berth_operator import labels
from berth_operator.api import BertTrainingSpec
from berth_operator.crdgen import build_crd

API_VERSION = f"{labels.GROUP}/{labels.VERSION}"
#: Trainer paths that a local run resolves relative to the manifest's folder.
PATH_FIELDS = (
    ("vocabulary",),
    ("initCheckpoint",),
    ("data", "train"),
    ("data", "validation"),
    ("data", "prepare", "output"),
    ("checkpoint", "dir"),
    ("output", "dir"),
)


class ManifestError(ValueError):
    """An invalid manifest; the message names the offending field(s)."""


def load_manifest(path: str | Path) -> dict[str, Any]:
    """Read, validate and default a manifest file (see `parse_manifest`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ManifestError(f"{path}: {error.strerror}") from error
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as error:
        raise ManifestError(f"{path}: not valid YAML: {error}") from error
    # Other kinds beside the training (Kueue's queues in examples/kueue-queued-training.yaml)
    # mean nothing to a local run.
    trainings = [d for d in documents if isinstance(d, Mapping) and d.get("kind") == labels.KIND]
    if len(documents) == 1:
        trainings = documents
    if len(trainings) != 1:
        raise ManifestError(f"{path}: expected one BertTraining document, found {len(trainings)}")
    return parse_manifest(trainings[0])


def parse_manifest(obj: Any) -> dict[str, Any]:
    """The manifest with its spec validated and defaulted; raises ManifestError."""
    if not isinstance(obj, Mapping):
        raise ManifestError("manifest: expected a mapping")
    if obj.get("apiVersion") != API_VERSION or obj.get("kind") != labels.KIND:
        raise ManifestError(
            f"apiVersion/kind: expected {API_VERSION} {labels.KIND}, "
            f"got {obj.get('apiVersion')} {obj.get('kind')}"
        )
    # The CRD's root-level rules (metadata.name), on the metadata alone: spec problems follow.
    root = {k: v for k, v in _schema().items() if k != "properties"}
    problems = list(cel_violations(root, {"metadata": obj.get("metadata") or {}}, ""))
    if problems:
        raise ManifestError("\n".join(problems))
    try:
        spec = BertTrainingSpec.model_validate(obj.get("spec") or {})
    except ValidationError as error:
        raise ManifestError("\n".join(_pydantic_messages(error))) from error
    wire = spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    problems = list(cel_violations(_schema()["properties"]["spec"], wire, "spec"))
    if problems:
        raise ManifestError("\n".join(problems))
    return {**obj, "spec": wire}


def _pydantic_messages(error: ValidationError) -> Iterator[str]:
    for detail in error.errors():
        where = ".".join(str(part) for part in ("spec", *detail["loc"]))
        message = detail["msg"].removeprefix("Value error, ")
        # Cross-field validators already start their message with the field's path.
        head = message.split(":", 1)[0].split(".", 1)[0]
        yield f"spec.{message}" if head in _SPEC_FIELDS else f"{where}: {message}"


_SPEC_FIELDS = frozenset(
    name
    for key, f in BertTrainingSpec.model_fields.items()
    for name in (key, f.alias)
    if name is not None
)


@functools.cache
def _schema() -> dict[str, Any]:
    """The CRD's whole schema, as the API server validates with it."""
    schema: dict[str, Any] = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@functools.cache
def _program(rule: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def cel_violations(schema: Mapping[str, Any], value: Any, path: str) -> Iterator[str]:
    """Messages of every CEL rule in `schema` (recursively) that `value` breaks."""
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue
        try:
            ok = bool(_program(rule["rule"]).evaluate({"self": celpy.json_to_cel(value)}))
        except celpy.CELEvalError:
            ok = False
        if not ok:
            yield rule.get("message") or f"{path}: failed rule {rule['rule']}"
    if isinstance(value, Mapping):
        for key, sub in (schema.get("properties") or {}).items():
            if key in value:
                yield from cel_violations(sub, value[key], f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            yield from cel_violations(schema["items"], item, f"{path}[{i}]")


def resolve_paths(spec: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """A copy of `spec` whose relative trainer paths are made absolute against `base`.

    Remote paths (`gs://...` and any other `scheme://`) and absolute paths stay as they are.
    """
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in spec.items()}
    for field_path in PATH_FIELDS:
        holder: dict[str, Any] = out
        for part in field_path[:-1]:
            child = holder.get(part)
            if not isinstance(child, Mapping):
                holder = {}
                break
            holder[part] = holder = dict(child)  # a copy: the caller's spec stays as it was
        value = holder.get(field_path[-1])
        if isinstance(value, str) and "://" not in value and not Path(value).is_absolute():
            holder[field_path[-1]] = str((base / value).resolve())
    return out
