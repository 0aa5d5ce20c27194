"""`berth-trainer`: train, prepare (text → tfrecord), vocab, predict.

The config is validated before TensorFlow is imported, so a bad config fails in well under two
seconds with the field named and exit code CONFIG_INVALID (2). Every failure with a known cause
exits with its `ExitCode` and writes its message to the termination log.

    berth-trainer train --config cfg.yaml [--metrics-port 9090] [--termination-log PATH]
    berth-trainer prepare --vocabulary vocab.txt --input 'corpus/*.txt' --output data.tfrecord \
        [--sequence-length 128] [--packing fullSentences] [--shards 8] ...
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
from berth_trainer.errors import TrainerError, write_termination_log
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
    prep.add_argument("--vocabulary", required=True)
    prep.add_argument("--input", required=True, help="text files (globs, comma-separated)")
    prep.add_argument(
        "--output", required=True, help="output .tfrecord path (with --shards N: its prefix)"
    )
    prep.add_argument("--sequence-length", type=int, default=128, help="training.sequenceLength")
    prep.add_argument("--shards", type=int, default=1, help="files to write (>= workers)")
    prep.add_argument("--seed", type=int, default=0)
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
            from berth_trainer.config import load_trainer_config

            try:
                cfg = load_trainer_config(args.config)
            except (OSError, ValueError) as err:
                raise TrainerError(ExitCode.CONFIG_INVALID, _config_error(err)) from err
            _quiet_tensorflow()
            from berth_trainer.runner import train

            train(cfg, metrics_port=args.metrics_port)
        elif args.command == "prepare":
            _quiet_tensorflow()
            from pydantic import ValidationError

            from berth_trainer.prepare import prepare_tfrecord

            flags = {
                k: v
                for k in PretrainingConfig.model_fields
                if (v := getattr(args, k, None)) is not None
            }
            try:
                pretraining = PretrainingConfig.model_validate(flags)
                TrainingConfig(sequence_length=args.sequence_length)
            except ValidationError as err:
                raise TrainerError(ExitCode.CONFIG_INVALID, _config_error(err)) from err
            counts = prepare_tfrecord(
                args.vocabulary,
                args.input,
                args.output,
                args.sequence_length,
                pretraining,
                max(args.shards, 1),
                args.seed,
            )
            log.info("wrote %s", args.output, extra={"fields": counts})
        elif args.command == "vocab":
            _quiet_tensorflow()
            from berth_trainer.vocab import build_vocabulary

            tokens = build_vocabulary(args.input, args.size, args.output, not args.cased)
            log.info("wrote %d tokens to %s", len(tokens), args.output)
        elif args.command == "predict":
            _quiet_tensorflow()
            from berth_trainer.prepare import predict

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


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    logging.getLogger("absl").setLevel(logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
