"""The generated CRD on the real API server: rejections name the field, defaults, explain."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from berth_operator.api import MAX_NAME_LENGTH
from tests.integration.conftest import GROUP, PLURAL, REPO, VERSION, kubectl, manifest

pytestmark = pytest.mark.cluster
EXAMPLES = REPO / "examples"


def _with(path: str, value: Any) -> dict[str, Any]:
    """A valid manifest with `path` (dotted, under spec) set to `value` (or removed: ...)."""
    body = copy.deepcopy(manifest("bad"))
    node = body
    *parents, last = ["spec", *path.split(".")] if path else ["spec"]
    for key in parents:
        node = node.setdefault(key, {})
    if value is ...:
        node.pop(last, None)
    else:
        node[last] = value
    return body


def _merge(**spec: Any) -> dict[str, Any]:
    body = manifest("bad")
    for key, value in spec.items():
        if isinstance(value, dict) and isinstance(body["spec"].get(key), dict):
            body["spec"][key] = {**body["spec"][key], **value}
        else:
            body["spec"][key] = value
    return body


MALFORMED: list[tuple[str, dict[str, Any], str]] = [
    ("workers-zero", _with("workers", 0), "spec.workers"),
    ("workers-string", _with("workers", "three"), "spec.workers"),
    ("workers-huge", _with("workers", 5000), "spec.workers"),
    ("task-unknown", _with("task", "translation"), "spec.task"),
    ("model-size-unknown", _with("model.size", "huge"), "spec.model.size"),
    ("model-empty", _with("model", {}), "spec.model"),
    (
        "model-heads-not-dividing",
        _with("model", {"numLayers": 2, "hiddenSize": 128, "numHeads": 3}),
        "spec.model.numHeads",
    ),
    ("model-dropout-one", _with("model.dropout", 1.0), "spec.model.dropout"),
    ("vocabulary-missing", _with("vocabulary", ...), "spec.vocabulary"),
    ("vocabulary-empty", _with("vocabulary", ""), "spec.vocabulary"),
    ("data-missing", _with("data", ...), "spec.data"),
    ("data-train-empty", _with("data.train", ""), "spec.data.train"),
    ("data-format-unknown", _with("data.format", "parquet"), "spec.data.format"),
    ("output-missing", _with("output", ...), "spec.output"),
    ("batch-not-divisible", _with("training.globalBatchSize", 50), "spec.training.globalBatchSize"),
    (
        "batch-not-divisible-accumulation",
        _merge(training={"globalBatchSize": 30, "gradientAccumulationSteps": 4}),
        "spec.training.globalBatchSize",
    ),
    (
        "sequence-longer-than-model",
        _with("training.sequenceLength", 1024),
        "spec.training.sequenceLength",
    ),
    (
        "predictions-longer-than-sequence",
        _with("training.maxPredictionsPerSequence", 100),
        "spec.training.maxPredictionsPerSequence",
    ),
    ("learning-rate-zero", _with("training.learningRate", 0), "spec.training.learningRate"),
    (
        "sentence-prediction-without-pairs",
        _with("pretraining", {"sentencePrediction": "nextSentence"}),
        "spec.pretraining.sentencePrediction",
    ),
    (
        "packing-unknown",
        _with("pretraining", {"packing": "greedy"}),
        "spec.pretraining.packing",
    ),
    (
        "whole-word-masking-unknown",
        _with("pretraining", {"wholeWordMasking": "japanese"}),
        "spec.pretraining.wholeWordMasking",
    ),
    (
        "qa-stride-skips-context",
        _merge(
            task="questionAnswering",
            questionAnswering={"docStride": 100, "maxQueryLength": 32},
        ),
        "spec.questionAnswering.docStride",
    ),
    (
        "qa-default-stride-too-long-for-short-sequences",
        _merge(task="questionAnswering", training={"sequenceLength": 64}),
        "spec.questionAnswering.docStride",
    ),
    (
        "seq2seq-target-leaves-no-source",
        _merge(task="seq2seq", seq2seq={"maxTargetLength": 126}),
        "spec.seq2seq.maxTargetLength",
    ),
    (
        "tag-scheme-unknown",
        _merge(task="tokenClassification", tokenClassification={"scheme": "iob1"}),
        "spec.tokenClassification.scheme",
    ),
    ("beam-zero", _merge(task="seq2seq", seq2seq={"beamSize": 0}), "spec.seq2seq.beamSize"),
    ("optimizer-unknown", _with("training.optimizer", "sgd"), "spec.training.optimizer"),
    ("precision-unknown", _with("training.precision", "float16"), "spec.training.precision"),
    ("classification-without-classes", _with("task", "classification"), "spec.training.numClasses"),
    ("one-class", _with("training.numClasses", 1), "spec.training.numClasses"),
    ("checkpoint-dir-needed-for-restarts", _with("checkpoint", {}), "spec.checkpoint.dir"),
    ("checkpoint-every-zero", _with("checkpoint.everySteps", 0), "spec.checkpoint.everySteps"),
    (
        "restart-policy-unknown",
        _with("runPolicy", {"restartPolicy": "Always"}),
        "spec.runPolicy.restartPolicy",
    ),
    ("backoff-negative", _with("runPolicy", {"backoffLimit": -1}), "spec.runPolicy.backoffLimit"),
    (
        "deadline-zero",
        _with("runPolicy", {"activeDeadlineSeconds": 0}),
        "spec.runPolicy.activeDeadlineSeconds",
    ),
    (
        "pending-timeout-zero",
        _with("runPolicy", {"pendingTimeoutSeconds": 0}),
        "spec.runPolicy.pendingTimeoutSeconds",
    ),
    (
        "clean-pod-policy-unknown",
        _with("runPolicy", {"cleanPodPolicy": "Some"}),
        "spec.runPolicy.cleanPodPolicy",
    ),
    ("suspend-not-bool", _with("runPolicy", {"suspend": "yes"}), "spec.runPolicy.suspend"),
    (
        "ttl-negative",
        _with("runPolicy", {"ttlSecondsAfterFinished": -5}),
        "spec.runPolicy.ttlSecondsAfterFinished",
    ),
    (
        "resources-not-quantity",
        _with("resources", {"limits": {"nvidia.com/gpu": True}}),
        "spec.resources.limits",
    ),
    ("pod-template-not-object", _with("podTemplate", "gpu-pool"), "spec.podTemplate"),
    ("spec-missing", {k: v for k, v in manifest("bad").items() if k != "spec"}, "spec"),
]


def refused(api: client.ApiClient, body: dict[str, Any], namespace: str = "default") -> Any:
    """The API server's refusal of a dry-run create of `body` (the test fails if it is taken)."""
    with pytest.raises(ApiException) as error:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body, dry_run="All"
        )
    return error.value


@pytest.mark.parametrize(("body", "field"), [pytest.param(b, f, id=i) for i, b, f in MALFORMED])
def test_malformed_manifest_is_rejected_naming_the_field(
    api: client.ApiClient, crd: str, body: dict[str, Any], field: str
) -> None:
    error = refused(api, body)
    assert error.status == 422, error.body
    message = json.loads(error.body)["message"]
    assert field in message, message


def test_valid_manifest_passes_and_gets_defaults(api: client.ApiClient, crd: str) -> None:
    body = manifest("ok")
    del body["spec"]["workers"]
    body["spec"]["training"] = {"globalBatchSize": 32}
    created = client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, body, dry_run="All"
    )
    spec = created["spec"]
    assert spec["workers"] == 4
    assert spec["runPolicy"] == {
        "restartPolicy": "OnFailure",
        "backoffLimit": 3,
        "pendingTimeoutSeconds": 900,
        "suspend": False,
        "cleanPodPolicy": "Running",
    }
    assert spec["training"]["sequenceLength"] == 128
    assert spec["model"]["maxSequenceLength"] == 512


def test_unknown_field_is_rejected_by_kubectl(crd: str) -> None:
    body = _with("trainingg", {"steps": 1})
    out = kubectl(
        "apply", "--dry-run=server", "-n", "default", "-f", "-", stdin=yaml.safe_dump(body)
    )
    assert out.returncode != 0
    assert "spec.trainingg" in out.stderr


@pytest.mark.parametrize(
    ("field", "patch"),
    [
        ("spec.workers", {"workers": 5}),
        ("spec.task", {"task": "classification", "training": {"numClasses": 2}}),
        ("spec.model", {"model": {"size": "mini"}}),
    ],
)
def test_immutable_fields(
    api: client.ApiClient, crd: str, namespace: str, field: str, patch: dict[str, Any]
) -> None:
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest("fixed"))
    with pytest.raises(ApiException) as error:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "fixed", {"spec": patch}
        )
    message = json.loads(error.value.body)["message"]
    assert f"{field}: field is immutable" in message
    # Mutable fields can still change.
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "fixed", {"spec": {"training": {"steps": 5}}}
    )


def test_kubectl_explain_shows_descriptions(crd: str) -> None:
    out = kubectl("explain", "berttraining.spec.training")
    assert out.returncode == 0, out.stderr
    assert "globalBatchSize" in out.stdout
    assert "globalBatchSize: examples per optimizer step over all workers." in " ".join(
        out.stdout.split()
    )
    run_policy = kubectl("explain", "bt.spec.runPolicy.restartPolicy")
    assert run_policy.returncode == 0, run_policy.stderr
    assert "ExitCode" in run_policy.stdout


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_accepted(crd: str, path: Path) -> None:
    out = kubectl("apply", "--dry-run=server", "-n", "default", "-f", str(path))
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    ("name", "says"),
    [
        pytest.param("b" * 60, f"no more than {MAX_NAME_LENGTH} characters", id="60-chars"),
        pytest.param("b" * (MAX_NAME_LENGTH + 1), "no more than", id="one-too-long"),
        pytest.param("9bert", "DNS-1035 label", id="digit-first"),
        pytest.param("b" + "-x" * (MAX_NAME_LENGTH // 2), None, id="longest"),
    ],
)
def test_name_is_bounded_so_every_derived_name_is_valid(
    api: client.ApiClient, crd: str, name: str, says: str | None
) -> None:
    """A longer name passed the API server, then every worker pod failed (hostname > 63)."""
    if says is None:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, manifest(name), dry_run="All"
        )
        return
    error = refused(api, manifest(name))
    assert error.status == 422, error.body
    message = json.loads(error.body)["message"]
    assert "metadata.name: must be" in message and says in message, message


def _template(**spec: Any) -> dict[str, Any]:
    return manifest("hostile", podTemplate={"spec": spec})


def _sidecar(**context: Any) -> dict[str, Any]:
    return _template(
        containers=[{"name": "sidecar", "image": "busybox", "securityContext": context}]
    )


T = "spec.podTemplate.spec"
#: Pod template fields the chart's ValidatingAdmissionPolicies refuse, and the field named.
HOSTILE: list[tuple[str, dict[str, Any], str]] = [
    ("hostNetwork", _template(hostNetwork=True), f"{T}.hostNetwork"),
    ("hostPID", _template(hostPID=True), f"{T}.hostPID"),
    ("hostIPC", _template(hostIPC=True), f"{T}.hostIPC"),
    ("nodeName", _template(nodeName="node-1"), f"{T}.nodeName"),
    (
        "hostPath",
        _template(volumes=[{"name": "root", "hostPath": {"path": "/"}}]),
        f"{T}.volumes[name=root].hostPath",
    ),
    (
        "privileged-trainer",
        _template(containers=[{"name": "trainer", "securityContext": {"privileged": True}}]),
        f"{T}.containers[name=trainer].securityContext.privileged",
    ),
    (
        "privileged-init-container",
        _template(
            initContainers=[
                {"name": "fetch", "image": "busybox", "securityContext": {"privileged": True}}
            ]
        ),
        f"{T}.initContainers[name=fetch].securityContext.privileged",
    ),
    (
        "capability-sys-admin",
        _sidecar(capabilities={"add": ["SYS_ADMIN"]}),
        f"{T}.containers[name=sidecar].securityContext.capabilities.add",
    ),
    (
        "capability-chown",
        _sidecar(capabilities={"add": ["CHOWN"]}),
        f"{T}.containers[name=sidecar].securityContext.capabilities.add",
    ),
    ("root-pod", _template(securityContext={"runAsUser": 0}), f"{T}.securityContext.runAsUser"),
    (
        "run-as-non-root-false",
        _template(securityContext={"runAsNonRoot": False}),
        f"{T}.securityContext.runAsNonRoot",
    ),
    (
        "root-sidecar",
        _sidecar(runAsUser=0),
        f"{T}.containers[name=sidecar].securityContext.runAsUser",
    ),
]


@pytest.mark.parametrize(("body", "field"), [pytest.param(b, f, id=i) for i, b, f in HOSTILE])
def test_hostile_pod_template_is_refused_at_admission_naming_the_field_unless_widened(
    api: client.ApiClient, widened_namespace: str, body: dict[str, Any], field: str
) -> None:
    error = refused(api, body)
    assert error.status in (403, 422), error.body
    message = json.loads(error.body)["message"]
    assert f"{field}: " in message, message
    assert "ValidatingAdmissionPolicy" in message, message
    # The chart's binding leaves out the namespace its values widen to privileged.
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, widened_namespace, PLURAL, body, dry_run="All"
    )
