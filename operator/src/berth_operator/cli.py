"""`berth-operator`: parse settings, log in, and run kopf with Berth's handlers."""

from __future__ import annotations

import getpass
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import kopf

from berth_operator import handlers, metrics
from berth_operator.context import Context
from berth_operator.controller import CONCURRENCY
from berth_operator.k8s import Cluster, load_config
from berth_operator.settings import parse_settings

if TYPE_CHECKING:
    from kopf._core.engines.peering import Identity


def identity() -> str:
    """This process's kopf identity (peering), `user@host/time/random` as kopf makes it.

    kopf's own default calls `getpass.getuser()`, which raises for a uid without a passwd
    entry: the images' user 65532, or any `runAsUser` a cluster picks.
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
    context = Context(settings=settings, cluster=Cluster(), phases=metrics.PhaseTracker())
    logging.getLogger("berth_operator").info(
        "watching %s; default image %s",
        ", ".join(settings.namespaces) or "all namespaces",
        settings.default_image,
    )
    kopf.run(
        registry=handlers.register(settings),
        clusterwide=settings.clusterwide,
        namespaces=settings.namespaces,
        standalone=settings.peering is None,
        peering_name=settings.peering,
        priority=settings.peering_priority or 0,
        liveness_endpoint=(
            f"http://0.0.0.0:{settings.liveness_port}/healthz" if settings.liveness_port else None
        ),
        memo=kopf.Memo(context=context),
        identity=cast("Identity", identity()),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
