"""The `berth` command: run or validate a BertTraining manifest locally.

    berth validate examples/quickstart.yaml
    berth run examples/quickstart.yaml [--workers N] [--work-dir DIR]

Exit codes: 0 the training succeeded (or the manifest is valid), 1 it failed, 2 the manifest is
invalid (nothing was started), 130 interrupted (workers stopped, checkpoints kept).
TensorFlow is never imported here: the workers are separate `berth-trainer` processes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from berth_operator.local.manifest import (
    ManifestError,
    load_manifest,
    parse_manifest,
    resolve_paths,
)
from berth_operator.local.runner import LocalRun, run_to_completion
from berth_operator.local.view import View

EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="berth", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train a manifest with local worker processes")
    run.add_argument("manifest", type=Path)
    run.add_argument("--workers", type=int, help="override spec.workers")
    run.add_argument(
        "--work-dir",
        type=Path,
        help="where config, logs and status.yaml go (default: runs/<name>)",
    )
    validate = commands.add_parser("validate", help="validate a manifest as the API server would")
    validate.add_argument("manifest", type=Path)
    return parser


def _load(path: Path, workers: int | None) -> dict[str, Any]:
    manifest = load_manifest(path)
    if workers is not None:
        manifest = parse_manifest({**manifest, "spec": {**manifest["spec"], "workers": workers}})
    base = path.resolve().parent
    return {**manifest, "spec": resolve_paths(manifest["spec"], base)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        manifest = _load(args.manifest, getattr(args, "workers", None))
    except ManifestError as error:
        print(f"berth: invalid manifest {args.manifest}:\n{error}", file=sys.stderr)
        return EXIT_INVALID
    name = manifest["metadata"]["name"]
    if args.command == "validate":
        print(f"{args.manifest}: valid BertTraining {name!r}")
        return 0
    work_dir = (args.work_dir or Path("runs") / name).resolve()
    run = LocalRun(manifest, work_dir)
    print(
        f"berth: running {name!r} with {run.spec.workers} local worker(s), "
        f"{run.threads} thread(s) each; logs in {work_dir / 'logs'}",
        file=sys.stderr,
    )
    with View(name, run.spec.workers) as view:
        try:
            phase = run_to_completion(run, lambda r: view.update(r.status, r.events))
        except KeyboardInterrupt:
            run.training["status"]["message"] = "interrupted: workers stopped, checkpoints kept"
            run.write_status()
            print("berth: interrupted; workers stopped, checkpoints kept", file=sys.stderr)
            return EXIT_INTERRUPTED
        view.update(run.status, run.events)
    status = run.status
    where = f"status in {work_dir / 'status.yaml'}"
    if phase != "Succeeded":
        print(f"berth: {name} {phase}: {status.get('message', '')}; {where}", file=sys.stderr)
        return EXIT_FAILED
    model = manifest["spec"]["output"]["dir"]
    print(f"berth: {name} succeeded; model in {model}; {where}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
