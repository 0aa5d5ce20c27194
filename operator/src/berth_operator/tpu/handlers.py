"""kopf handlers of Cloud TPU trainings (`spec.tpu.provider: cloud`): thin glue.

* `reconcile-tpu`, a timer every --reconcile-interval: the admin's rules
  (`tpu.tenancy.TpuTenancy.refusal`, before any API call) → observe the node through the Cloud
  TPU API → `tpu.policy.decide` → create/delete the node, record events, one status patch. The
  Cloud TPU API has no watch, so this path polls it; the training itself comes from kopf's
  watch, never from a GET;
* `delete-tpu`, on deletion of the BertTraining (behind kopf's finalizer): delete the TPU and
  wait until the API no longer lists it, so nothing is left billing (a refused training never
  calls the API, and a node that is not the training's is never deleted).

A Cloud TPU API that does not answer raises `kopf.TemporaryError` with an exponential delay:
the pass is retried, the handler never crashes and the training keeps its phase.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from berth_operator import builders, labels, outcome
from berth_operator.api import TpuSpec
from berth_operator.context import Context, from_memo
from berth_operator.tpu import node as tpu
from berth_operator.tpu import policy as tpu_policy
from berth_operator.tpu.client import TpuApi, TpuRejected, TransientTpuError, make_client, parse_key
from berth_operator.tpu.tenancy import Refusal, TrainingRef

log = logging.getLogger(__name__)

#: Seconds a credentials Secret read is reused.
SECRET_TTL = 300.0


def is_cloud(spec: kopf.Spec, **_: Any) -> bool:
    """kopf `when` filter: trainings whose TPU comes from the Cloud TPU API."""
    return bool((spec.get("tpu") or {}).get("provider") == "cloud")


def is_not_cloud(spec: kopf.Spec, **_: Any) -> bool:
    return not is_cloud(spec)


def backoff(retry: int) -> float:
    """Seconds before retry `retry` (0, 1, ...) of a pass the API did not answer: 1 → 60."""
    return float(min(60, 2 ** min(retry, 6)))


async def _secret(ctx: Context, namespace: str, name: str) -> dict[str, str] | None:
    """The credentials Secret's data, read at most once per SECRET_TTL (not every pass): a
    rotated key is picked up within that time."""
    now = asyncio.get_running_loop().time()
    cached = ctx.tpu_secrets.get((namespace, name))
    if cached is not None and cached[0] > now:
        return cached[1]
    data = await asyncio.to_thread(ctx.cluster.get_secret_data, namespace, name)
    if data is not None:
        ctx.tpu_secrets[(namespace, name)] = (now + SECRET_TTL, data)
    return data


async def _api(ctx: Context, namespace: str, spec: TpuSpec) -> TpuApi:
    """A TpuApi with the training's credentials, cached per endpoint and credentials."""
    settings = ctx.settings
    key: dict[str, Any] | None = None
    version = ""
    if spec.credentials_secret and not settings.tpu_api_insecure:
        data = await _secret(ctx, namespace, spec.credentials_secret)
        if data is None:
            raise TransientTpuError(f"credentialsSecret {spec.credentials_secret} not found")
        key = parse_key(data)
        version = str(key.get("private_key_id", ""))
    cache_key = (settings.tpu_api_endpoint, namespace, spec.credentials_secret or "", version)
    client = ctx.tpu_clients.get(cache_key)
    if client is None:
        client = make_client(settings.tpu_api_endpoint, settings.tpu_api_insecure, key)
        ctx.tpu_clients[cache_key] = client
    return TpuApi(client)


def _tpu_spec(spec: Any) -> TpuSpec:
    return TpuSpec.model_validate(dict(spec.get("tpu") or {}))


def _refusal(ctx: Context, namespace: str, tpu_spec: TpuSpec) -> Refusal | None:
    return ctx.settings.tpu_tenancy.refusal(
        namespace, tpu_spec.project, tpu_spec.credentials_secret, tpu_spec.service_account
    )


async def _drive(
    ctx: Context,
    api: TpuApi,
    body: kopf.Body,
    training: dict[str, Any],
    tpu_spec: TpuSpec,
    now: datetime,
) -> tpu_policy.TpuPlan:
    """Observe the training's node, decide, and create or delete it: the pass's plan."""
    ref = TrainingRef.of(training["metadata"])
    operation = ((training.get("status") or {}).get("tpu") or {}).get("operation")
    obs = await api.observe(ref, tpu_spec, operation)
    plan = tpu_policy.decide(training, obs, now)
    if plan.action == "create":
        spec = builders.parse_spec(training)
        node = tpu.node_fields(
            training,
            spec,
            spec.image or ctx.settings.default_image,
            plan.restart,
            ctx.settings.tpu_tenancy.service_account(ref.namespace, tpu_spec.service_account),
        )
        try:
            created = await api.create(ref, tpu_spec, node)
        except TpuRejected as error:
            return tpu_policy.decide(
                training, dataclasses.replace(obs, create_error=str(error)), now
            )
        plan.status["tpu"] = {**plan.status["tpu"], "state": "CREATING"}
        if created:
            plan.status["tpu"]["operation"] = created
        kopf.event(
            body,
            type="Normal",
            reason="CreatedTpu",
            message=f"creating TPU {plan.status['tpu']['name']}",
        )
    if plan.action == "delete":
        await api.delete(ref, tpu_spec)
        kopf.event(
            body,
            type="Normal",
            reason="DeletedTpu",
            message=f"deleting TPU {plan.status['tpu']['name']}",
        )
    return plan


async def reconcile_tpu(
    namespace: str | None,
    name: str,
    body: kopf.Body,
    patch: kopf.Patch,
    memo: Any,
    **kwargs: Any,
) -> None:
    """One pass over a Cloud TPU training (see berth_operator.tpu.policy)."""
    ctx = from_memo(memo)
    retry = int(kwargs.get("retry") or 0)
    assert namespace is not None
    training: dict[str, Any] = {**body, "metadata": dict(body.metadata)}
    if training["metadata"].get("deletionTimestamp"):
        return
    old_status = training.get("status") or {}
    now = datetime.now(UTC)
    try:
        tpu_spec = _tpu_spec(training["spec"])
        refusal = _refusal(ctx, namespace, tpu_spec)
        if refusal is not None:  # not one call with the operator's credentials
            plan = tpu_policy.decide(training, tpu_policy.TpuObservation(), now, refusal)
        else:
            api = await _api(ctx, namespace, tpu_spec)
            plan = await _drive(ctx, api, body, training, tpu_spec, now)
    except TransientTpuError as error:
        log.warning("%s/%s: %s (retry %d)", namespace, name, error, retry)
        raise kopf.TemporaryError(str(error), delay=backoff(retry)) from error
    except (ValidationError, TpuRejected) as error:  # no TPU can come of this spec
        plan = tpu_policy.decide(training, tpu_policy.TpuObservation(create_error=str(error)), now)
    outcome.record_pass(body, namespace, name, plan.events, old_status, plan.status)
    if plan.delete_training:
        await asyncio.to_thread(ctx.cluster.delete_training, namespace, name)
    else:
        patch.status.update(tpu_policy.status_patch(old_status, plan.status))


async def delete_tpu(
    namespace: str | None,
    name: str,
    spec: kopf.Spec,
    meta: kopf.Meta,
    memo: Any,
    retry: int,
    **_: Any,
) -> None:
    """Finalizer: delete the training's TPU and hold the BertTraining until it is gone."""
    ctx = from_memo(memo)
    assert namespace is not None
    try:
        tpu_spec = _tpu_spec(spec)
    except ValidationError:
        return  # the CRD never admitted such a spec: there is no TPU to delete
    refusal = _refusal(ctx, namespace, tpu_spec)
    if refusal is not None:
        log.warning(
            "%s/%s: no Cloud TPU call, nothing deleted: %s", namespace, name, refusal.message
        )
        return
    ref = TrainingRef.of(meta)
    try:
        api = await _api(ctx, namespace, tpu_spec)
        await api.delete(ref, tpu_spec)  # only if its labels name this training
        if await api.owned_node_exists(ref, tpu_spec):
            raise kopf.TemporaryError("waiting for the TPU to be deleted", delay=2)
    except (TransientTpuError, TpuRejected) as error:
        log.warning("%s/%s: deleting the TPU: %s (retry %d)", namespace, name, error, retry)
        raise kopf.TemporaryError(str(error), delay=backoff(retry)) from error
    log.info("%s/%s: TPU %s deleted", namespace, name, tpu.node_name(ref, tpu_spec))


def register(registry: kopf.OperatorRegistry, interval: float) -> None:
    """Add the Cloud TPU handlers to `registry` (berth_operator.handlers.register calls it)."""
    resource = (labels.GROUP, labels.VERSION, labels.PLURAL)
    kopf.timer(*resource, registry=registry, id="reconcile-tpu", interval=interval, when=is_cloud)(
        reconcile_tpu
    )
    kopf.on.delete(*resource, registry=registry, id="delete-tpu", when=is_cloud)(delete_tpu)
