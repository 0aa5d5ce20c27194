"""`berth-operator`: parse settings, log in, and run kopf with Berth's handlers (with
`--leader-elect`, only while this process holds the Lease: `berth_operator.leader`)."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import kopf
from aiohttp import web

from berth_operator import handlers, leader, metrics
from berth_operator.context import Context
from berth_operator.controller import CONCURRENCY
from berth_operator.k8s import Cluster, load_config
from berth_operator.settings import Settings, parse_settings

if TYPE_CHECKING:
    from kopf._core.engines.peering import Identity


def identity() -> str:
    """This process's kopf identity, `user@host/time/random` as kopf makes it.

    kopf makes one even without peering, and its own default calls `getpass.getuser()`, which
    raises for a uid without a passwd entry: the images' user 65532, or any `runAsUser` a
    cluster picks.
    """
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    now = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    return f"{user}@{socket.gethostname()}/{now}/{secrets.token_hex(3)}"


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)-7s [%(name)s] %(message)s",
        stream=sys.stderr,
    )
    if settings.log_level != "DEBUG":  # kopf logs every handler run at INFO
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    load_config(pool_size=CONCURRENCY + handlers.SYNC_THREADS)  # every thread one connection
    elector = (
        leader.Elector(
            cast("str", settings.leader_election_namespace),
            settings.leader_election_id,
            leader.identity(os.environ),
            settings.leader_election,
        )
        if settings.leader_elect
        else None
    )
    context = Context(
        settings=settings,
        cluster=Cluster(fence=elector.fence if elector else None),
        phases=metrics.PhaseTracker(),
    )
    logging.getLogger("berth_operator").info(
        "watching %s; default image %s",
        ", ".join(settings.namespaces) or "all namespaces",
        settings.default_image,
    )
    options: dict[str, Any] = {
        "registry": handlers.register(settings),
        "clusterwide": settings.clusterwide,
        "namespaces": settings.namespaces,
        "standalone": True,  # no kopf peering: the Lease decides who acts
        "liveness_endpoint": (
            f"http://0.0.0.0:{settings.liveness_port}/healthz" if settings.liveness_port else None
        ),
        "memo": kopf.Memo(context=context),
        "identity": cast("Identity", identity()),
    }
    metrics.serve(settings.metrics_port)  # a standby's too: its scrapes say it stands by
    if elector is None:
        metrics.LEADER.set(1)
        kopf.run(**options)
    else:
        asyncio.run(campaign(elector, settings, options))
    return 0


async def campaign(elector: leader.Elector, settings: Settings, options: dict[str, Any]) -> None:
    """Stand by (answering the liveness probe) until this process holds the Lease, then run
    kopf while it does (`leader.lead`)."""

    async def operate() -> None:
        await kopf.operator(**options)

    async with standby_health(settings.liveness_port):
        await elector.acquire()
    metrics.LEADER.set(1)
    await leader.lead(elector, operate)
    metrics.LEADER.set(0)


@contextlib.asynccontextmanager
async def standby_health(port: int) -> AsyncIterator[None]:
    """`/healthz` on `port` (0: none) while standing by, as kopf's endpoint answers once it
    runs: a replica waiting for the Lease is alive, and its probes must not restart it."""
    if not port:
        yield
        return

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"standby": True})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port, reuse_address=True).start()
    try:
        yield
    finally:
        await runner.cleanup()  # kopf binds the port next


if __name__ == "__main__":
    sys.exit(main())
