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
| --retry-max SECONDS          | BERTH_RETRY_MAX          | 60                   |
| --log-level LEVEL            | BERTH_LOG_LEVEL          | INFO                 |
| --leader-elect               | BERTH_LEADER_ELECT       | off                  |
| --leader-election-namespace NS | BERTH_LEADER_ELECTION_NAMESPACE | $POD_NAMESPACE |
| --leader-election-id NAME    | BERTH_LEADER_ELECTION_ID | berth-operator       |
| --leader-election-lease-duration SECONDS | BERTH_LEADER_ELECTION_LEASE_DURATION | 15 |
| --leader-election-renew-deadline SECONDS | BERTH_LEADER_ELECTION_RENEW_DEADLINE | 10 |
| --leader-election-retry-period SECONDS | BERTH_LEADER_ELECTION_RETRY_PERIOD | 2   |
| --tpu-api-endpoint HOST:PORT | BERTH_TPU_API_ENDPOINT   | tpu.googleapis.com   |
| --tpu-api-insecure           | BERTH_TPU_API_INSECURE   | off (tests only)     |
| --tpu-project NS=P[,P...]    | BERTH_TPU_PROJECTS       | none (`;` separated) |
| --tpu-service-account NS=SA  | BERTH_TPU_SERVICE_ACCOUNTS | none (`;` sep.)    |
| --tpu-require-credentials-secret | BERTH_TPU_REQUIRE_CREDENTIALS_SECRET | off    |
| --kueue                      | BERTH_KUEUE              | off                  |
| --no-network-policy          | BERTH_NETWORK_POLICY     | on                   |
| --metrics-peer JSON (repeatable) | BERTH_METRICS_PEERS (JSON list) | none       |
| --pod-policy LEVEL           | BERTH_POD_POLICY         | restricted           |
| --pod-policy-namespace NS=LEVEL (repeatable) | BERTH_POD_POLICY_NAMESPACES | none |

`--pod-policy` is the level (`berth_operator.podpolicy`: restricted, baseline, privileged) the
merged worker pods of every namespace are checked at; `--pod-policy-namespace` sets another
level for one namespace (the env form: `NS=LEVEL,NS=LEVEL`). The chart passes the same values
it binds its ValidatingAdmissionPolicy with.

With several replicas, `--leader-elect` lets only the holder of the Lease
`--leader-election-namespace`/`--leader-election-id` run kopf (`berth_operator.leader`); lease
duration > renew deadline > retry period.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from berth_operator import leader
from berth_operator.networkpolicy import validate_peer
from berth_operator.podpolicy import Level
from berth_operator.tpu.tenancy import TpuTenancy, parse_projects, parse_service_accounts

DEFAULT_IMAGE = "berth-trainer:0.1.0"
DEFAULT_TPU_API_ENDPOINT = "tpu.googleapis.com"
DEFAULT_LEASE = "berth-operator"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the operator can be told at start-up."""

    namespaces: tuple[str, ...] = ()  # empty: all namespaces (cluster-wide)
    default_image: str = DEFAULT_IMAGE
    metrics_port: int = 8000
    liveness_port: int = 8080
    progress_interval: float = 5.0
    reconcile_interval: float = 2.0
    #: Longest wait before a failed pass is retried (a create the API server refused is only
    #: noticed fixed by retrying: a ServiceAccount or ResourceQuota is not watched).
    retry_max: float = 60.0
    log_level: str = "INFO"
    #: Run kopf only while holding the Lease `leader_election_namespace`/`leader_election_id`.
    leader_elect: bool = False
    leader_election_namespace: str | None = None  # None without --leader-elect
    leader_election_id: str = DEFAULT_LEASE
    leader_election: leader.Timings = dataclasses.field(default_factory=leader.Timings)
    tpu_api_endpoint: str = DEFAULT_TPU_API_ENDPOINT
    tpu_api_insecure: bool = False  # plaintext gRPC, no credentials: fakes in tests only
    #: Who may use which Cloud TPU project and service account (berth_operator.tpu.tenancy).
    tpu_tenancy: TpuTenancy = dataclasses.field(default_factory=TpuTenancy)
    kueue: bool = False  # trainings labelled kueue.x-k8s.io/queue-name wait for Kueue
    #: Each training gets a NetworkPolicy isolating its workers (berth_operator.networkpolicy).
    network_policy: bool = True
    #: NetworkPolicyPeers allowed to reach the workers' metrics port: the operator's own pods
    #: must be among them, or it cannot read progress where the policy is enforced.
    metrics_peers: tuple[dict[str, Any], ...] = ()
    pod_policy: Level = Level.RESTRICTED
    #: (namespace, level) pairs overriding `pod_policy`.
    pod_policy_namespaces: tuple[tuple[str, Level], ...] = ()

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    def pod_policy_for(self, namespace: str) -> Level:
        """The pod policy level of worker pods in `namespace`.

        >>> Settings(pod_policy_namespaces=(("lab", Level.PRIVILEGED),)).pod_policy_for("lab")
        <Level.PRIVILEGED: 'privileged'>
        """
        return dict(self.pod_policy_namespaces).get(namespace, self.pod_policy)


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


def _namespace_level(value: str) -> tuple[str, Level]:
    namespace, _, level = value.partition("=")
    try:
        return namespace.strip(), Level(level.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not NS=LEVEL with LEVEL one of {', '.join(Level)}: {value}"
        ) from None


def _flag(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _peer(value: str) -> dict[str, Any]:
    try:
        return validate_peer(json.loads(value))
    except ValueError as error:  # json.JSONDecodeError is a ValueError
        raise argparse.ArgumentTypeError(f"not a NetworkPolicyPeer: {error}") from None


def _peers(value: str) -> list[dict[str, Any]]:
    """BERTH_METRICS_PEERS: a JSON list of NetworkPolicyPeers (empty: none)."""
    try:
        found = json.loads(value) if value.strip() else []
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"BERTH_METRICS_PEERS is not JSON: {error}") from None
    if not isinstance(found, list):
        raise argparse.ArgumentTypeError(f"BERTH_METRICS_PEERS must be a JSON list: {value}")
    return [_peer(json.dumps(peer)) for peer in found]


def _lease_namespace(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    namespaces: tuple[str, ...],
    env: Mapping[str, str],
) -> str | None:
    """The Lease's namespace: given, else the pod's own (downward API), else the first watched
    namespace; a usage error when leader election has none of them."""
    if not args.leader_elect:
        return None
    namespace = (
        args.leader_election_namespace or env.get("POD_NAMESPACE") or next(iter(namespaces), None)
    )
    if not namespace:
        parser.error("--leader-elect needs --leader-election-namespace (or $POD_NAMESPACE)")
    return str(namespace)


def _timings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> leader.Timings:
    timings = leader.Timings(
        lease_duration=args.leader_election_lease_duration,
        renew_deadline=args.leader_election_renew_deadline,
        retry_period=args.leader_election_retry_period,
    )
    if not timings.lease_duration > timings.renew_deadline > timings.retry_period:
        parser.error(
            "leader election needs lease duration > renew deadline > retry period, got "
            f"{timings.lease_duration:g} > {timings.renew_deadline:g} > {timings.retry_period:g}"
        )
    return timings


_Parsed = TypeVar("_Parsed")


def _checked(
    parser: argparse.ArgumentParser, parse: Callable[[list[str]], _Parsed], assignments: list[str]
) -> _Parsed:
    """`parse(assignments)`; a ValueError is a usage error (the operator does not start)."""
    try:
        return parse(assignments)
    except ValueError as error:
        parser.error(str(error))


def _env_list(env: Mapping[str, str], key: str) -> list[str]:
    return [part.strip() for part in env.get(key, "").split(";") if part.strip()]


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
        "--retry-max",
        type=_positive,
        default=_positive(env.get("BERTH_RETRY_MAX", "60")),
        help="most seconds before a failed pass is retried (its backoff doubles up to this)",
    )
    parser.add_argument(
        "--log-level",
        default=env.get("BERTH_LOG_LEVEL", "INFO").upper(),
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
    )
    parser.add_argument(
        "--leader-elect",
        action="store_true",
        default=_flag(env.get("BERTH_LEADER_ELECT", "")),
        help="run only while holding a coordination.k8s.io Lease (several replicas: one acts)",
    )
    parser.add_argument(
        "--leader-election-namespace",
        default=env.get("BERTH_LEADER_ELECTION_NAMESPACE") or None,
        metavar="NS",
        help="namespace of the Lease (default: $POD_NAMESPACE, else the first --namespace)",
    )
    parser.add_argument(
        "--leader-election-id",
        default=env.get("BERTH_LEADER_ELECTION_ID") or DEFAULT_LEASE,
        metavar="NAME",
        help="name of the Lease",
    )
    for flag, default in (
        ("lease-duration", leader.LEASE_DURATION),
        ("renew-deadline", leader.RENEW_DEADLINE),
        ("retry-period", leader.RETRY_PERIOD),
    ):
        variable = f"BERTH_LEADER_ELECTION_{flag.replace('-', '_').upper()}"
        parser.add_argument(
            f"--leader-election-{flag}",
            type=_positive,
            default=_positive(env.get(variable) or str(default)),
            metavar="SECONDS",
            help=f"Lease {flag.replace('-', ' ')} (default {default:g})",
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
        "--tpu-project",
        action="append",
        default=None,
        metavar="NS=PROJECT[,PROJECT...]",
        help="GCP projects the Cloud TPU trainings of namespace NS may use (repeatable; NS or "
        "PROJECT '*' means any; env BERTH_TPU_PROJECTS, ';' separated); unmapped: none",
    )
    parser.add_argument(
        "--tpu-service-account",
        action="append",
        default=None,
        metavar="NS=EMAIL",
        help="the service account every TPU VM of namespace NS runs as (repeatable; env "
        "BERTH_TPU_SERVICE_ACCOUNTS, ';' separated); spec.tpu.serviceAccount may only repeat it",
    )
    parser.add_argument(
        "--tpu-require-credentials-secret",
        action="store_true",
        default=_flag(env.get("BERTH_TPU_REQUIRE_CREDENTIALS_SECRET", "")),
        help="refuse Cloud TPU trainings without spec.tpu.credentialsSecret: never lend the "
        "operator's own credentials",
    )
    parser.add_argument(
        "--kueue",
        action="store_true",
        default=_flag(env.get("BERTH_KUEUE", "")),
        help="queue trainings labelled kueue.x-k8s.io/queue-name with Kueue (needs Kueue's "
        "CRDs and BertTraining.v1alpha1.berth.dev in its integrations.externalFrameworks)",
    )
    parser.add_argument(
        "--no-network-policy",
        dest="network_policy",
        action="store_false",
        default=_flag(env.get("BERTH_NETWORK_POLICY", "true")),
        help="create no NetworkPolicy per training (its workers' TF port, which runs any graph "
        "it is sent, is then open to every pod the cluster's network lets through)",
    )
    parser.add_argument(
        "--metrics-peer",
        action="append",
        type=_peer,
        default=None,
        metavar="JSON",
        help="a NetworkPolicyPeer allowed to reach the workers' metrics port, e.g. "
        '\'{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "berth"}}}\' '
        "(repeatable; env BERTH_METRICS_PEERS, a JSON list); the operator's own pods must be "
        "one, or it reads no progress where the policy is enforced",
    )
    parser.add_argument(
        "--pod-policy",
        type=Level,
        choices=list(Level),
        default=Level(env.get("BERTH_POD_POLICY") or Level.RESTRICTED),
        help="Pod Security level the merged worker pods must meet; a training whose pod does "
        "not fails before any pod exists (privileged: no checks)",
    )
    parser.add_argument(
        "--pod-policy-namespace",
        action="append",
        type=_namespace_level,
        default=None,
        metavar="NS=LEVEL",
        help="another --pod-policy level for namespace NS (repeatable; env "
        "BERTH_POD_POLICY_NAMESPACES, ',' separated)",
    )
    return parser


def parse_settings(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Settings from flags, falling back to `env` (os.environ by default)."""
    env = os.environ if env is None else env
    parser = build_parser(env)
    args = parser.parse_args(argv)
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
        retry_max=args.retry_max,
        log_level=args.log_level,
        leader_elect=args.leader_elect,
        leader_election_namespace=_lease_namespace(parser, args, namespaces, env),
        leader_election_id=args.leader_election_id,
        leader_election=_timings(parser, args),
        tpu_api_endpoint=args.tpu_api_endpoint,
        tpu_api_insecure=args.tpu_api_insecure,
        tpu_tenancy=TpuTenancy(
            projects=_checked(
                parser, parse_projects, args.tpu_project or _env_list(env, "BERTH_TPU_PROJECTS")
            ),
            service_accounts=_checked(
                parser,
                parse_service_accounts,
                args.tpu_service_account or _env_list(env, "BERTH_TPU_SERVICE_ACCOUNTS"),
            ),
            require_credentials_secret=args.tpu_require_credentials_secret,
        ),
        kueue=args.kueue,
        network_policy=args.network_policy,
        metrics_peers=tuple(
            args.metrics_peer
            if args.metrics_peer is not None
            else _peers(env.get("BERTH_METRICS_PEERS", ""))
        ),
        pod_policy=args.pod_policy,
        pod_policy_namespaces=tuple(
            args.pod_policy_namespace
            if args.pod_policy_namespace is not None
            else [
                _namespace_level(item)
                for item in env.get("BERTH_POD_POLICY_NAMESPACES", "").split(",")
                if item.strip()
            ]
        ),
    )
