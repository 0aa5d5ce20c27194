"""Operator settings: command-line flags, each with an environment fallback.

| flag                         | env                      | default              |
|------------------------------|--------------------------|----------------------|
| --namespace NS (repeatable)  | BERTH_WATCH_NAMESPACES   | all namespaces       |
| --all-namespaces             |                          |                      |
| --default-image IMAGE        | BERTH_DEFAULT_IMAGE      | berth-trainer:0.1.0  |
| --metrics-port N (0 = off)   | BERTH_METRICS_PORT       | 8000                 |
| --liveness-port N (0 = off)  | BERTH_LIVENESS_PORT      | 8080                 |
| --progress-interval SECONDS  | BERTH_PROGRESS_INTERVAL  | 5                    |
| --reconcile-interval SECONDS | BERTH_RECONCILE_INTERVAL | 2                    |
| --log-level LEVEL            | BERTH_LOG_LEVEL          | INFO                 |
| --peering NAME               | BERTH_PEERING            | standalone           |
| --peering-priority N         | BERTH_PEERING_PRIORITY   | random (peering on)  |
| --tpu-api-endpoint HOST:PORT | BERTH_TPU_API_ENDPOINT   | tpu.googleapis.com   |
| --tpu-api-insecure           | BERTH_TPU_API_INSECURE   | off (tests only)     |
| --kueue                      | BERTH_KUEUE              | off                  |

With several replicas, kopf pauses every operator that sees a live peer of the *same*
priority, so each process picks a random priority unless one is given: the highest live one
acts, the others stand by.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
from collections.abc import Mapping, Sequence

DEFAULT_IMAGE = "berth-trainer:0.1.0"
DEFAULT_TPU_API_ENDPOINT = "tpu.googleapis.com"
#: Random peering priorities are drawn from [1, PRIORITY_RANGE] (kopf's default is 0).
PRIORITY_RANGE = 1_000_000


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the operator can be told at start-up."""

    namespaces: tuple[str, ...] = ()  # empty: all namespaces (cluster-wide)
    default_image: str = DEFAULT_IMAGE
    metrics_port: int = 8000
    liveness_port: int = 8080
    progress_interval: float = 5.0
    reconcile_interval: float = 2.0
    log_level: str = "INFO"
    peering: str | None = None  # None: standalone (no kopf peering)
    peering_priority: int | None = None  # None without peering
    tpu_api_endpoint: str = DEFAULT_TPU_API_ENDPOINT
    tpu_api_insecure: bool = False  # plaintext gRPC, no credentials: fakes in tests only
    kueue: bool = False  # trainings labelled kueue.x-k8s.io/queue-name wait for Kueue

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


def _positive(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {value}")
    return number


def _port(value: str) -> int:
    number = int(value)
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"not a port (0 disables): {value}")
    return number


def _flag(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="berth-operator",
        description="Run the Berth operator (kopf) for berth.dev/v1alpha1 BertTraining.",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=None,
        metavar="NS",
        help="watch this namespace (repeatable; env BERTH_WATCH_NAMESPACES, comma separated)",
    )
    scope.add_argument(
        "--all-namespaces",
        "-A",
        action="store_true",
        help="watch every namespace (the default when no namespace is given)",
    )
    parser.add_argument(
        "--default-image",
        default=env.get("BERTH_DEFAULT_IMAGE", DEFAULT_IMAGE),
        help="trainer image of trainings without spec.image",
    )
    parser.add_argument(
        "--metrics-port",
        type=_port,
        default=_port(env.get("BERTH_METRICS_PORT", "8000")),
        help="Prometheus /metrics port of the operator; 0 disables",
    )
    parser.add_argument(
        "--liveness-port",
        type=_port,
        default=_port(env.get("BERTH_LIVENESS_PORT", "8080")),
        help="kopf liveness endpoint port (/healthz); 0 disables",
    )
    parser.add_argument(
        "--progress-interval",
        type=_positive,
        default=_positive(env.get("BERTH_PROGRESS_INTERVAL", "5")),
        help="seconds between scrapes of worker 0's metrics",
    )
    parser.add_argument(
        "--reconcile-interval",
        type=_positive,
        default=_positive(env.get("BERTH_RECONCILE_INTERVAL", "2")),
        help="seconds between polls of the Cloud TPU API (provider cloud); pods are watched",
    )
    parser.add_argument(
        "--log-level",
        default=env.get("BERTH_LOG_LEVEL", "INFO").upper(),
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
    )
    parser.add_argument(
        "--peering",
        default=env.get("BERTH_PEERING") or None,
        metavar="NAME",
        help="kopf peering object name (needs kopf's peering CRDs); default: standalone",
    )
    parser.add_argument(
        "--peering-priority",
        type=int,
        default=int(env["BERTH_PEERING_PRIORITY"]) if env.get("BERTH_PEERING_PRIORITY") else None,
        metavar="N",
        help="kopf peering priority: the highest live replica acts (default with --peering: "
        f"a random integer in 1..{PRIORITY_RANGE} per process, so replicas never tie)",
    )
    parser.add_argument(
        "--tpu-api-endpoint",
        default=env.get("BERTH_TPU_API_ENDPOINT") or DEFAULT_TPU_API_ENDPOINT,
        metavar="HOST:PORT",
        help="Cloud TPU API (tpu_v2) endpoint of spec.tpu.provider cloud",
    )
    parser.add_argument(
        "--tpu-api-insecure",
        action="store_true",
        default=_flag(env.get("BERTH_TPU_API_INSECURE", "")),
        help="plaintext gRPC without credentials to --tpu-api-endpoint (test fakes only)",
    )
    parser.add_argument(
        "--kueue",
        action="store_true",
        default=_flag(env.get("BERTH_KUEUE", "")),
        help="queue trainings labelled kueue.x-k8s.io/queue-name with Kueue (needs Kueue's "
        "CRDs and BertTraining.v1alpha1.berth.dev in its integrations.externalFrameworks)",
    )
    return parser


def parse_settings(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Settings from flags, falling back to `env` (os.environ by default)."""
    env = os.environ if env is None else env
    args = build_parser(env).parse_args(argv)
    if args.all_namespaces:
        namespaces: tuple[str, ...] = ()
    elif args.namespace:
        namespaces = tuple(dict.fromkeys(args.namespace))
    else:
        namespaces = tuple(
            ns.strip() for ns in env.get("BERTH_WATCH_NAMESPACES", "").split(",") if ns.strip()
        )
    return Settings(
        namespaces=namespaces,
        default_image=args.default_image,
        metrics_port=args.metrics_port,
        liveness_port=args.liveness_port,
        progress_interval=args.progress_interval,
        reconcile_interval=args.reconcile_interval,
        log_level=args.log_level,
        peering=args.peering,
        peering_priority=(
            None
            if args.peering is None
            else args.peering_priority
            if args.peering_priority is not None
            else random.randint(1, PRIORITY_RANGE)
        ),
        tpu_api_endpoint=args.tpu_api_endpoint,
        tpu_api_insecure=args.tpu_api_insecure,
        kueue=args.kueue,
    )
