"""`prepare` (text → pre-tokenized tfrecord) and `predict` (query an exported model)."""

from __future__ import annotations

import json
import os

import tensorflow as tf

from berth_trainer.data import resolve_files
from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode
from berth_trainer.vocab import load_vocabulary, make_tokenizer


def prepare_tfrecord(vocabulary: str, pattern: str, output: str) -> int:
    """Write one tf.train.Example per non-blank line: `token_ids` (WordPiece ids, no [CLS]/[SEP];
    packing and masking happen at training time). Returns the number of examples."""
    tokenizer = make_tokenizer(load_vocabulary(vocabulary))
    files = resolve_files(pattern, "--input")
    lines = tf.data.TextLineDataset(files).filter(
        lambda s: tf.strings.length(tf.strings.strip(s)) > 0
    )
    count = 0
    with tf.io.TFRecordWriter(output) as writer:
        for batch in lines.batch(256):
            tokenized = tokenizer(batch)  # eager keras-hub returns python lists for ragged
            for ids in tokenized.to_list() if hasattr(tokenized, "to_list") else tokenized:
                feature = tf.train.Feature(int64_list=tf.train.Int64List(value=ids))
                example = tf.train.Example(
                    features=tf.train.Features(feature={"token_ids": feature})
                )
                writer.write(example.SerializeToString())
                count += 1
    if not count:
        raise TrainerError(ExitCode.DATA_INVALID, f"--input: no text lines in {files}")
    return count


def predict(model_dir: str, texts: list[str]) -> list[dict]:
    """Run the exported SavedModel's serving signature on raw strings."""
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops the SavedModel uses)

    path = os.path.join(model_dir, "saved_model")
    if not tf.io.gfile.exists(path):
        raise TrainerError(ExitCode.CONFIG_INVALID, f"--model: no saved_model/ in {model_dir}")
    serve = tf.saved_model.load(path).signatures["serving_default"]
    out = {k: v.numpy() for k, v in serve(text=tf.constant(texts)).items()}
    results = []
    for i, text in enumerate(texts):
        if "top_k_tokens" in out:
            masks = [
                {
                    "position": int(out["mask_positions"][i][j]),
                    "top_k": [
                        {"token": tok.decode(), "probability": round(float(p), 4)}
                        for tok, p in zip(
                            out["top_k_tokens"][i][j], out["top_k_probabilities"][i][j], strict=True
                        )
                    ],
                }
                for j in range(len(out["mask_valid"][i]))
                if out["mask_valid"][i][j]
            ]
            results.append({"text": text, "masks": masks})
        else:
            results.append(
                {
                    "text": text,
                    "label": out["label"][i].decode(),
                    "probabilities": [round(float(p), 4) for p in out["probabilities"][i]],
                }
            )
    return json.loads(json.dumps(results))
