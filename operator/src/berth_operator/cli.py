"""`berth-operator`: parse settings, log in, and run kopf with Berth's handlers."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import kopf

from berth_operator import handlers, metrics
from berth_operator.context import Context
from berth_operator.controller import CONCURRENCY
from berth_operator.k8s import Cluster, load_config
from berth_operator.settings import parse_settings


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
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
