"""`berth-trainer`: train, prepare (text → tfrecord), vocab, predict.

The config is validated before TensorFlow is imported, so a bad config fails in well under two
seconds with the field named and exit code CONFIG_INVALID (2). Every failure with a known cause
exits with its `ExitCode` and writes its message to the termination log; a training that succeeds
leaves its final figures there instead (the chief only: `observability.final_figures`).

    berth-trainer train --config cfg.yaml [--metrics-port 9090] [--termination-log PATH]
    berth-trainer prepare --vocabulary vocab.txt --input 'corpus/*.txt' --output data.tfrecord \
        [--sequence-length 128] [--packing fullSentences] [--shards 8] \
        [--worker I --workers N] ...
    berth-trainer prepare --config cfg.yaml --worker I     # slice I of data.prepare.workers
    berth-trainer vocab --input 'corpus/*.txt' --output vocab.txt --size 8000
    berth-trainer predict --model out/ "the [MASK] sat on the mat"
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from berth_trainer.config import PretrainingConfig, TrainingConfig
from berth_trainer.errors import TrainerError, termination_log_path, write_termination_log
from berth_trainer.exit_codes import ExitCode

log = logging.getLogger("berth_trainer")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="berth-trainer", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a model from a config file")
    train.add_argument("--config", required=True, help="YAML or JSON trainer config")
    train.add_argument("--metrics-port", type=int, default=9090, help="Prometheus port; 0=off")
    train.add_argument(
        "--termination-log",
        default=None,
        help="default $BERTH_TERMINATION_LOG or /dev/termination-log",
    )
    prep = sub.add_parser(
        "prepare", help="tokenize and pack text files into tfrecord shards for pretraining"
    )
    prep.add_argument(
        "--config",
        help="a trainer config with data.prepare: its input, vocabulary, settings and output "
        "(instead of the flags below)",
    )
    prep.add_argument("--vocabulary")
    prep.add_argument("--input", help="text files (globs, comma-separated)")
    prep.add_argument("--output", help="output .tfrecord path (with several shards: a prefix)")
    prep.add_argument("--sequence-length", type=int, default=128, help="training.sequenceLength")
    prep.add_argument("--shards", type=int, default=1, help="files each worker writes")
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument(
        "--worker",
        type=int,
        default=int(os.environ.get("JOB_COMPLETION_INDEX", 0)),
        help="which slice of the input to prepare (default $JOB_COMPLETION_INDEX or 0)",
    )
    prep.add_argument(
        "--workers",
        type=int,
        default=None,
        help="slices in all (default data.prepare.workers or 1)",
    )
    prep.add_argument("--metrics-port", type=int, default=0, help="Prometheus port; 0=off")
    for flag, field in (
        ("--packing", "packing"),
        ("--sentence-prediction", "sentence_prediction"),
        ("--whole-word-masking", "whole_word_masking"),
        ("--short-sequence-probability", "short_sequence_probability"),
    ):
        info = PretrainingConfig.model_fields[field]
        prep.add_argument(
            flag, default=None, help=f"pretraining.{info.description} Default {info.default}."
        )
    voc = sub.add_parser("vocab", help="learn a WordPiece vocab.txt from text files")
    voc.add_argument("--input", required=True, nargs="+", help="text files or globs")
    voc.add_argument("--output", required=True)
    voc.add_argument("--size", type=int, default=30522)
    voc.add_argument("--cased", action="store_true", help="keep case (default: lower-case)")
    pred = sub.add_parser(
        "predict",
        help="query an exported model: fill [MASK]s, classify, score, tag, answer, generate",
    )
    pred.add_argument("--model", required=True, help="output.dir of a finished training")
    pred.add_argument(
        "text",
        nargs="+",
        help="one string per example, or for a model of several inputs a JSON object per "
        'example: \'{"question": "...", "context": "..."}\'',
    )
    for p in (prep, voc, pred):
        p.add_argument("--termination-log", default=None)
    return parser


def _config_error(err: Exception) -> str:
    from pydantic import ValidationError

    if not isinstance(err, ValidationError):
        return str(err)
    lines = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        loc = ".".join(str(x) for x in e["loc"])
        lines.append(f"{loc}: {msg}" if loc and not msg.startswith(loc) else msg)
    return "config invalid: " + "; ".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the process exit code (an `ExitCode`)."""
    args = _parser().parse_args(argv)
    from berth_trainer.observability import setup_logging

    setup_logging()
    try:
        if args.command == "train":
            cfg = _load_config(args.config)
            _quiet_tensorflow()
            from berth_trainer.runner import train

            # Exit 0: the chief leaves its final figures in the termination log.
            train(cfg, args.metrics_port, termination_log_path(args.termination_log))
        elif args.command == "prepare":
            _quiet_tensorflow()
            output, counts = _prepare(args)
            log.info("wrote %s", output, extra={"fields": counts})
        elif args.command == "vocab":
            _quiet_tensorflow()
            from berth_trainer.vocab import build_vocabulary

            tokens = build_vocabulary(args.input, args.size, args.output, not args.cased)
            log.info("wrote %d tokens to %s", len(tokens), args.output)
        elif args.command == "predict":
            _quiet_tensorflow()
            from berth_trainer.predict import predict

            print(json.dumps(predict(args.model, args.text), indent=2))
        return int(ExitCode.OK)
    except TrainerError as err:
        log.error(str(err), extra={"fields": {"exit_code": int(err.code)}})
        write_termination_log(str(err), args.termination_log)
        if args.command == "train" and err.code == ExitCode.PREEMPTED:
            # The checkpoint (if any) and the logs are written; the pod's grace period has
            # no time for 1-4 s of interpreter and TensorFlow teardown.
            from berth_trainer.preemption import exit_now

            exit_now(int(err.code))
        return int(err.code)
    except KeyboardInterrupt:
        return int(ExitCode.PREEMPTED)
    except Exception as err:
        log.exception("internal error")
        write_termination_log(f"internal error: {type(err).__name__}: {err}", args.termination_log)
        return int(ExitCode.INTERNAL)
    finally:
        sys.stdout.flush()


def _prepare(args: argparse.Namespace) -> tuple[str, dict[str, float]]:
    from pydantic import ValidationError

    from berth_trainer.corpus import prepare

    if args.config:
        cfg = _load_config(args.config)
        if cfg.data.prepare is None:
            raise TrainerError(
                ExitCode.CONFIG_INVALID, f"{args.config}: data.prepare is not set: nothing to do"
            )
        if args.workers is not None:
            update = {"workers": args.workers}
            data = cfg.data.model_copy(
                update={"prepare": cfg.data.prepare.model_copy(update=update)}
            )
            cfg = cfg.model_copy(update={"data": data})
        return cfg.data.prepare.output, prepare.prepare_config(cfg, args.worker, args.metrics_port)
    absent = [f"--{k}" for k in ("vocabulary", "input", "output") if not getattr(args, k)]
    if absent:
        raise TrainerError(
            ExitCode.CONFIG_INVALID, f"prepare: {', '.join(absent)} required (or --config)"
        )
    flags = {
        k: v for k in PretrainingConfig.model_fields if (v := getattr(args, k, None)) is not None
    }
    try:
        pretraining = PretrainingConfig.model_validate(flags)
        TrainingConfig(sequence_length=args.sequence_length)
    except ValidationError as err:
        raise TrainerError(ExitCode.CONFIG_INVALID, _config_error(err)) from err
    settings = prepare.Settings(
        args.vocabulary,
        args.sequence_length,
        pretraining,
        args.seed,
        args.workers or 1,
        max(args.shards, 1),
    )
    counts = prepare.prepare_files(
        args.input, args.output, settings, args.worker, args.metrics_port
    )
    return args.output, counts


def _load_config(path: str):
    from berth_trainer.config import load_trainer_config

    try:
        return load_trainer_config(path)
    except (OSError, ValueError) as err:
        raise TrainerError(ExitCode.CONFIG_INVALID, _config_error(err)) from err


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    logging.getLogger("absl").setLevel(logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
