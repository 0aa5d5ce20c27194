"""The `kubectl-berth` command (`kubectl berth ...`): arguments, the connection, kubectl's errors.

kubectl hands a plugin its arguments and nothing else, so the plugin reads the same
kubeconfig kubectl would: `--kubeconfig`, else $KUBECONFIG (a list of files, merged), else
~/.kube/config; `--context`, else the current context; `-n/--namespace`, else the context's
namespace, else `default`. Failures print as kubectl prints them and exit 1:

    Error from server (NotFound): berttrainings.berth.dev "bert" not found
    error: unknown command "lgos" for "kubectl berth"
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import NoReturn

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from berth_operator.kubectl import describe, logs
from berth_operator.kubectl.reader import Reader

PROG = "kubectl berth"


class Parser(argparse.ArgumentParser):
    """argparse with kubectl's usage errors: `error: ...`, a pointer to --help, exit 1."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"error: {message}\nSee '{self.prog} --help' for usage.\n")


def server_error(error: ApiException) -> str:
    """An API error as kubectl prints it, from the Status the API server sent.

    >>> e = ApiException(status=404, reason="Not Found")
    >>> e.body = '{"kind": "Status", "reason": "NotFound", "message": "x \\\\"b\\\\" not found"}'
    >>> server_error(e)
    'Error from server (NotFound): x "b" not found'
    """
    try:
        body = json.loads(error.body or "")
    except (TypeError, ValueError):
        body = {}
    if not isinstance(body, dict):
        body = {}
    message = body.get("message") or error.reason or f"HTTP {error.status}"
    reason = body.get("reason")
    return f"Error from server ({reason}): {message}" if reason else f"Error from server: {message}"


class Session:
    """A client for the chosen kubeconfig context, and the namespace to work in."""

    def __init__(self, kubeconfig: str | None, context: str | None, namespace: str | None):
        contexts, active = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
        chosen = active
        if context is not None:
            chosen = next((c for c in contexts if c.get("name") == context), None)
            if chosen is None:
                raise kubernetes.config.ConfigException(f'context "{context}" does not exist')
        self.namespace = (
            namespace or (chosen or {}).get("context", {}).get("namespace") or "default"
        )
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
        configuration.connection_pool_maxsize = 64  # one log stream per worker, at once
        self.api = kubernetes.client.ApiClient(configuration)


def parser() -> Parser:
    """The command line: global flags anywhere, one subcommand per action."""
    common = Parser(add_help=False)
    common.add_argument(
        "--kubeconfig", default=argparse.SUPPRESS, help="path to the kubeconfig file to use"
    )
    common.add_argument(
        "--context", default=argparse.SUPPRESS, help="the kubeconfig context to use"
    )
    common.add_argument(
        "-n", "--namespace", default=argparse.SUPPRESS, help="the namespace of the training"
    )
    top = Parser(
        prog=PROG,
        parents=[common],
        description="Follow BertTrainings (berth.dev): their logs, state and TensorBoard.",
        epilog="Run 'kubectl berth COMMAND --help' for a command's flags.",
    )
    commands = top.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=Parser, title="commands"
    )
    log = commands.add_parser(
        "logs",
        parents=[common],
        help="print a training's worker logs (-f: follow it across group restarts)",
        description="Print the logs of worker 0 of the training's current group (--worker N: "
        "worker N; --all: every worker, each line prefixed [worker-I rG] with its index and "
        "group restart). With -f, follow them across group restarts until the training has "
        "Succeeded or Failed. While the training is Preparing: its prepare Job's pods.",
    )
    log.add_argument("name", metavar="NAME", help="the BertTraining")
    log.add_argument("-f", "--follow", action="store_true", help="follow until it finishes")
    which = log.add_mutually_exclusive_group()
    which.add_argument("--worker", type=int, metavar="N", help="worker index (default 0)")
    which.add_argument("--all", action="store_true", help="every worker, prefixed")
    log.add_argument("--since", metavar="DURATION", help="only newer lines, e.g. 5m")
    log.add_argument("--tail", type=int, metavar="LINES", help="only the last LINES lines")
    log.set_defaults(run=run_logs)
    show = commands.add_parser(
        "describe",
        parents=[common],
        help="show a training's state, workers, restarts and events",
        description="Show on one screen a training's phase, conditions, progress, validation "
        "metrics, queue, data preparation, the current group's workers (and why failed ones "
        "failed), what caused each group restart, TensorBoard, and its recent events.",
    )
    show.add_argument("name", metavar="NAME", help="the BertTraining")
    show.set_defaults(run=run_describe)
    board = commands.add_parser(
        "tensorboard",
        parents=[common],
        help="port-forward to a training's TensorBoard (spec.tensorboard.enabled)",
        description="Port-forward 127.0.0.1:PORT to the training's TensorBoard Service and "
        "print its URL; stop with Ctrl-C.",
    )
    board.add_argument("name", metavar="NAME", help="the BertTraining")
    board.add_argument(
        "--port", type=int, default=0, metavar="P", help="local port (default: a free one)"
    )
    board.set_defaults(run=run_tensorboard)
    return top


def run_logs(session: Session, args: argparse.Namespace) -> int:
    since = logs.parse_since(args.since) if args.since else None
    worker = None if args.all else (args.worker or 0)
    reader = Reader(session.api, session.namespace, args.name)
    workers = int((reader.training().get("spec") or {}).get("workers") or 1)  # NotFound first
    if worker is not None and not 0 <= worker < workers:
        raise ValueError(f"--worker {worker}: BertTraining {args.name} has workers 0-{workers - 1}")
    if args.follow:
        logs.Follower(reader, worker, since, args.tail, sys.stdout).run()
    else:
        logs.show(reader, worker, since, args.tail, sys.stdout)
    return 0


def run_describe(session: Session, args: argparse.Namespace) -> int:
    reader = Reader(session.api, session.namespace, args.name)
    training, pods, events, services = describe.fetch(reader)
    sys.stdout.write(describe.render(training, pods, events, datetime.now(UTC), services))
    return 0


def run_tensorboard(session: Session, args: argparse.Namespace) -> int:
    from berth_operator.kubectl.tensorboard import TensorBoardError, forward  # loaded on use

    Reader(session.api, session.namespace, args.name).training()  # NotFound first
    try:
        process, url = forward(
            session.namespace,
            args.name,
            local_port=args.port,
            kubeconfig=getattr(args, "kubeconfig", None),
            context=getattr(args, "context", None),
        )
    except TensorBoardError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"TensorBoard for {session.namespace}/{args.name}: {url} (Ctrl-C to stop)", flush=True)
    try:
        code = process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)
    print(f"error: kubectl port-forward exited with code {code}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    top = parser()
    args = top.parse_args(argv)
    if args.command is None:
        top.print_help()
        return 0
    try:
        session = Session(
            getattr(args, "kubeconfig", None),
            getattr(args, "context", None),
            getattr(args, "namespace", None),
        )
        return int(args.run(session, args))
    except ApiException as error:
        print(server_error(error), file=sys.stderr)
    except logs.NoLogsError as error:
        print(f"error: {error}", file=sys.stderr)
    except (kubernetes.config.ConfigException, ValueError, RuntimeError, TimeoutError) as error:
        print(f"error: {error}", file=sys.stderr)
    except urllib3.exceptions.HTTPError as error:
        print(f"Unable to connect to the server: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 1
