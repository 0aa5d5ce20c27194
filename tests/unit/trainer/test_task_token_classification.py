"""Token classification (NER): conlleval chunking and entity P/R/F1 on hand-made tags, the
graph's chunking against the Python one, reading CoNLL/jsonl into first-piece labels, a tiny
model learning synthetic entities through the CLI with its export tagging raw strings in a
fresh process, two workers with a step-exact resume, and bad rows named by file and line."""

from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from trainer_testlib import (
    TINY_MODEL,
    assert_task_resumes_on_two_workers,
    cli_env,
    failed_training,
    train_to_metrics,
)

from berth_trainer.tasks.token_classification import (
    conll_sentences,
    entities,
    layout,
    prf,
    tag_problem,
)

# -- the synthetic dataset: numbers are NUM (consecutive ones one entity), names PER ----------

O_WORDS = ["the", "a", "cat", "dog", "saw", "paid", "met", "with", "and", "on", "today", "for"]
O_WORDS += ["cafe", "uber", "big", "red", "house", "walked", "to", "from", ",", "."]
FIRST = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank"]
LAST = ["Smith", "Jones", "Brown", "Miller"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = [*SPECIALS, *O_WORDS, *(w.lower() for w in FIRST + LAST)]
VOCAB += [str(d) for d in range(10)] + [f"##{d}" for d in range(10)]  # numbers: several pieces


def _sentence(rng: random.Random) -> list[tuple[str, str]]:
    """Words and BIO tags: an O word between any two entities, so the tags follow from the
    words (a number after a number continues its entity, a surname follows a first name)."""
    out: list[tuple[str, str]] = []
    for _ in range(rng.randint(3, 7)):
        draw = 0.0 if out and out[-1][1] != "O" else rng.random()
        if draw < 0.55:
            out.append((rng.choice(O_WORDS), "O"))
        elif draw < 0.8:
            for i in range(rng.randint(1, 2)):
                out.append((str(rng.randint(0, 10 ** rng.randint(1, 3) - 1)), "BI"[i > 0] + "-NUM"))
        else:
            out.append((rng.choice(FIRST), "B-PER"))
            if rng.random() < 0.5:
                out.append((rng.choice(LAST), "I-PER"))
    return out


def _write_conll(path: Path, n: int, seed: int) -> str:
    """CoNLL-2003 layout: word POS chunk NER, -DOCSTART- lines between documents."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        if i % 50 == 0:
            lines += ["-DOCSTART- -X- -X- O", ""]
        lines += [f"{w} NN I-NP {t}" for w, t in _sentence(rng)] + [""]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _write_jsonl(path: Path, n: int, seed: int) -> str:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words, tags = zip(*_sentence(rng), strict=True)
        lines.append(json.dumps({"words": list(words), "labels": list(tags)}) + "\n")
    path.write_text("".join(lines))
    return str(path)


def _config(tmp_path: Path, **training) -> dict:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    return {
        "task": "tokenClassification",
        "vocabulary": str(vocab),
        "model": dict(TINY_MODEL),
        "data": {
            "train": _write_conll(tmp_path / "train.conll", 600, 1),
            "validation": _write_conll(tmp_path / "valid.conll", 150, 2),
            "format": "conll",
        },
        "tokenClassification": {"scheme": "bio"},
        "training": {
            "sequenceLength": 24,
            "globalBatchSize": 32,
            "steps": 300,
            "learningRate": 0.003,
            "warmupSteps": 10,
            "logEverySteps": 10,
            **training,
        },
        "checkpoint": {"everySteps": 300},
        "output": {"dir": str(tmp_path / "out")},
    }


# -- pure functions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "scheme", "expected"),
    [
        ([], "bio", []),
        (["O", "O"], "bio", []),
        (["B-PER", "I-PER", "O", "B-LOC"], "bio", [("PER", 0, 2), ("LOC", 3, 4)]),
        (["B-PER", "B-PER", "I-PER"], "bio", [("PER", 0, 1), ("PER", 1, 3)]),
        (["B-PER", "I-LOC", "I-LOC"], "bio", [("PER", 0, 1), ("LOC", 1, 3)]),  # type change
        (["I-PER", "I-PER", "O"], "bio", [("PER", 0, 2)]),  # lenient: I- after O begins
        (["O", "I-PER", "B-PER"], "bio", [("PER", 1, 2), ("PER", 2, 3)]),
        (["B-PER", "I-PER"], "bio", [("PER", 0, 2)]),  # an entity at the end
        (["I-ORG"], "bio", [("ORG", 0, 1)]),
        (["B-PER", "I-PER", "E-PER", "O"], "bioes", [("PER", 0, 3)]),
        (
            ["S-PER", "S-PER", "B-LOC", "E-LOC"],
            "bioes",
            [("PER", 0, 1), ("PER", 1, 2), ("LOC", 2, 4)],
        ),
        (
            ["B-PER", "E-PER", "I-PER", "E-PER"],
            "bioes",
            [("PER", 0, 2), ("PER", 2, 4)],
        ),  # I after E
        (["E-PER", "O"], "bioes", [("PER", 0, 1)]),  # lenient: E- after O is one word
        (["S-PER", "E-PER"], "bioes", [("PER", 0, 1), ("PER", 1, 2)]),
        (["B-PER", "I-PER", "O", "I-PER", "E-PER"], "bioes", [("PER", 0, 2), ("PER", 3, 5)]),
        (["B-PER", "S-LOC", "I-LOC"], "bioes", [("PER", 0, 1), ("LOC", 1, 2), ("LOC", 2, 3)]),
    ],
)
def test_entities_follow_conlleval(tags, scheme, expected):
    assert entities(tags, scheme) == expected


@pytest.mark.parametrize("tag", ["E-PER", "S-PER", "X-PER", "B-", "BPER", "b-per", ""])
def test_tags_outside_bio_are_problems(tag):
    assert tag_problem(tag, "bio") is not None
    with pytest.raises(ValueError, match="scheme bio"):
        entities(["O", tag], "bio")


def test_bioes_allows_e_and_s_but_not_others():
    assert tag_problem("E-PER", "bioes") is None and tag_problem("S-X", "bioes") is None
    assert "B-/I-/E-/S-TYPE" in tag_problem("L-PER", "bioes")


@pytest.mark.parametrize(
    ("gold", "predicted", "precision", "recall"),
    [
        ([["B-PER", "I-PER", "O"]], [["B-PER", "I-PER", "O"]], 1.0, 1.0),
        ([["B-PER", "I-PER", "O"]], [["B-PER", "O", "O"]], 0.0, 0.0),  # span must match
        ([["B-PER", "O"]], [["B-LOC", "O"]], 0.0, 0.0),  # type must match
        ([["B-PER", "O", "B-LOC"]], [["B-PER", "O", "O"]], 1.0, 0.5),
        ([["B-PER", "O"], ["O", "O"]], [["B-PER", "O"], ["B-LOC", "O"]], 0.5, 1.0),
        ([["O", "I-PER"]], [["O", "B-PER"]], 1.0, 1.0),  # lenient gold: I- after O
        ([["O"]], [["O"]], 0.0, 0.0),  # nothing to find, nothing found
    ],
)
def test_prf_micro_averages_over_sentences(gold, predicted, precision, recall):
    m = prf(gold, predicted, "bio")
    assert m["precision"] == pytest.approx(precision) and m["recall"] == pytest.approx(recall)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    assert m["f1"] == pytest.approx(f1)


def test_prf_counts_entities_not_sentences():
    gold = [["B-A", "O", "B-A", "O", "B-A"], ["B-B", "I-B"]]
    predicted = [["B-A", "O", "O", "O", "O"], ["B-B", "I-B"]]
    assert prf(gold, predicted) == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3)}


@pytest.mark.parametrize(
    ("pieces", "n", "ids", "firsts"),
    [
        ([[7], [8, 9], [10]], 8, [1, 7, 8, 9, 10, 2], [1, 2, 4]),
        ([[7], [8, 9], [10]], 5, [1, 7, 8, 9, 2], [1, 2]),  # [10] cut off: not labelled
        ([[7], [8, 9], [10]], 4, [1, 7, 8, 2], [1, 2]),  # a word's first piece kept: labelled
        ([[7, 8, 9, 10]], 4, [1, 7, 8, 2], [1]),
    ],
)
def test_layout_labels_first_pieces_of_kept_words(pieces, n, ids, firsts):
    assert layout(pieces, n, 1, 2) == (ids, firsts)


def test_conll_reads_last_column_skips_docstart_and_numbers_lines():
    text = "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\nPeter B-PER\n"
    first, second = conll_sentences(enumerate(text.split("\n"), 1), "f.conll", "data.train")
    assert (first.words, first.tags, first.where) == (
        ["EU", "rejects"],
        ["B-ORG", "O"],
        ["f.conll:3", "f.conll:4"],
    )
    assert (second.words, second.tags, second.where) == (["Peter"], ["B-PER"], ["f.conll:7"])


def test_graph_entities_equal_python_entities_on_random_tags():
    import tensorflow as tf

    from berth_trainer.tasks.token_classification import _CODES, graph_entities

    rng = random.Random(0)
    types = ["A", "B"]
    batch = []
    for _ in range(300):
        length = rng.randint(0, 9)
        batch.append(
            [
                "O" if rng.random() < 0.3 else f"{rng.choice('BIES')}-{rng.choice(types)}"
                for _ in range(length)
            ]
        )
    width = max(map(len, batch))
    prefix = [[_CODES[t[0]] for t in tags] + [0] * (width - len(tags)) for tags in batch]
    type_ = [
        [0 if t == "O" else types.index(t[2:]) + 1 for t in tags] + [0] * (width - len(tags))
        for tags in batch
    ]
    count, first, last, kind, valid = (
        x.numpy() for x in graph_entities(tf.constant(prefix), tf.constant(type_))
    )
    for i, tags in enumerate(batch):
        served = [
            (types[kind[i, e] - 1], int(first[i, e]), int(last[i, e]) + 1) for e in range(count[i])
        ]
        assert served == entities(tags, "bioes"), tags
        assert valid[i].sum() == count[i]


# -- reading through the task --------------------------------------------------------------


def _task(tmp_path: Path, fmt: str = "conll", sequence_length: int = 8, **tc):
    from berth_trainer.config import TrainerConfig
    from berth_trainer.data import ExampleEncoder
    from berth_trainer.tasks.token_classification import TASK_CLASS

    cfg = _config(tmp_path, sequenceLength=sequence_length)
    cfg["data"]["format"] = fmt
    cfg["tokenClassification"] |= tc
    config = TrainerConfig.model_validate(cfg)
    return TASK_CLASS(config, ExampleEncoder(config, VOCAB))


def _read(task, path: Path):
    """`prepare` data.train `path` and encode it: its one chunk and the label names."""
    task.prepare([str(path)], [])
    (encoded,) = task.chunks(task.train_files, "data.train")
    return encoded, task.labels


def test_read_labels_first_pieces_and_cuts_long_sentences(tmp_path, caplog):
    path = tmp_path / "a.conll"
    path.write_text("Alice B-PER\npaid O\n1234 B-NUM\n\n12 B-NUM\n345 I-NUM\n6 I-NUM\n7 I-NUM\n")
    task = _task(tmp_path)
    logger = logging.getLogger("berth_trainer")  # the CLI's logging stops propagation
    logger.addHandler(caplog.handler)
    try:
        encoded, labels = _read(task, path)
        list(task.chunks(task.train_files, "data.train"))  # a second pass: no second warning
    finally:
        logger.removeHandler(caplog.handler)
    assert labels == ["O", "B-NUM", "B-PER", "I-NUM"]
    ids = {t: i for i, t in enumerate(VOCAB)}
    cls, sep, pad = ids["[CLS]"], ids["[SEP]"], ids["[PAD]"]
    first, second = encoded.features["token_ids"].tolist()
    assert first == [
        cls,
        ids["alice"],
        ids["paid"],
        ids["1"],
        ids["##2"],
        ids["##3"],
        ids["##4"],
        sep,
    ]
    assert encoded.labels["weights"][0].tolist() == [0, 1, 1, 1, 0, 0, 0, 0]
    assert encoded.labels["tags"][0].tolist()[:4] == [0, 2, 0, 1]
    # 12 | 345 | 6 | 7: 7 pieces, 6 fit; "7" is cut off, so neither labelled nor a reference
    assert second == [cls, ids["1"], ids["##2"], ids["3"], ids["##4"], ids["##5"], ids["6"], sep]
    assert encoded.labels["weights"][1].tolist() == [0, 1, 0, 1, 0, 0, 1, 0]
    assert encoded.references == [["B-PER", "O", "B-NUM"], ["B-NUM", "I-NUM", "I-NUM"]]
    assert encoded.features["padding_mask"].tolist() == [[1] * 8, [1] * 8]
    assert encoded.features["segment_ids"].sum() == 0 and pad not in first
    assert "1 of 2 sentences cut" in caplog.text
    # one record (the handler may see it twice: here and through propagation)
    assert len({id(r) for r in caplog.records if "sentences cut" in r.getMessage()}) == 1


def test_read_jsonl_keys_from_config(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"w": ["Bob", "met", "carol"], "t": ["S-PER", "O", "S-PER"]}\n')
    task = _task(tmp_path, "jsonl", 16, scheme="bioes", tokensField="w", tagsField="t")
    encoded, labels = _read(task, path)
    assert labels == ["O", "S-PER"]
    assert encoded.references == [["S-PER", "O", "S-PER"]]
    assert encoded.labels["weights"][0].tolist()[:5] == [0, 1, 1, 1, 0]


def _prepared(tmp_path: Path, content: bytes):
    """A token classification task (through `for_task`) prepared on a CoNLL data.train."""
    from berth_trainer.config import TrainerConfig
    from berth_trainer.data import ExampleEncoder
    from berth_trainer.tasks import for_task

    path = tmp_path / "bytes.conll"
    path.write_bytes(content)
    config = TrainerConfig.model_validate(_config(tmp_path))
    task = for_task(config, ExampleEncoder(config, VOCAB))
    task.prepare([str(path)], [])
    return task, str(path)


def test_conll_bom_before_docstart_is_not_a_word(tmp_path):
    content = "\ufeff-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n"
    task, path = _prepared(tmp_path, content.encode())
    (sentence,) = task.examples([path], "data.train")
    assert sentence.words == ["EU", "rejects"]
    assert sentence.where == [f"{path}:3", f"{path}:4"]
    assert task.labels == ["O", "B-ORG"]


def test_conll_not_utf8_names_file_and_line(tmp_path):
    from berth_trainer.errors import TrainerError
    from berth_trainer.exit_codes import ExitCode

    with pytest.raises(TrainerError) as err:
        _prepared(tmp_path, "the O\n\ncaf\xe9 O\n".encode("latin-1"))
    path = tmp_path / "bytes.conll"
    assert err.value.code == ExitCode.DATA_INVALID == 3
    assert str(err.value).startswith(f"data.train: {path}:3: not UTF-8 text")


def test_model_clones_and_rebuilds_from_config(tmp_path):
    import keras

    from berth_trainer.modeling import build_backbone

    task = _task(tmp_path)
    task.labels = ["O", "B-PER", "I-PER"]
    model = task.build(build_backbone(task.cfg, len(VOCAB)))
    assert model.get_layer("classifier").units == 3
    inputs = {k: np.ones((2, 8), np.int32) for k in ("token_ids", "segment_ids", "padding_mask")}
    expected = model(inputs)["logits"].numpy()
    assert expected.shape == (2, 8, 3)
    for copy in (keras.models.clone_model(model), type(model).from_config(model.get_config())):
        copy.set_weights(model.get_weights())
        np.testing.assert_allclose(copy(inputs)["logits"].numpy(), expected, rtol=1e-5)


# -- through the CLI ---------------------------------------------------------------------------

SERVE = """
import json, sys, tensorflow as tf, tensorflow_text
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
out = serve(text=tf.constant(json.loads(sys.argv[2])))
print(json.dumps({k: v.numpy().tolist() for k, v in out.items()}, default=lambda b: b.decode()))
"""


@pytest.mark.slow
def test_token_classification_learns_entities_and_export_tags_raw_text(tmp_path):
    metrics = train_to_metrics(_config(tmp_path), tmp_path)
    out = tmp_path / "out"
    assert metrics["validation_f1"] >= 0.9, metrics
    assert metrics["validation_precision"] >= 0.9 and metrics["validation_recall"] >= 0.9
    assert metrics["validation_f1"] > metrics["initial_validation_f1"] + 0.5, metrics
    hf = json.loads((out / "huggingface" / "config.json").read_text())
    assert hf["architectures"] == ["BertForTokenClassification"]
    assert hf["id2label"] == {"0": "O", "1": "B-NUM", "2": "B-PER", "3": "I-NUM", "4": "I-PER"}

    texts = [
        "über café , Alice Smith paid 12 34 today .",  # 2-byte characters before the entities
        "the dog met Bob and 7",
        "",
    ]
    served = subprocess.run(
        [sys.executable, "-c", SERVE, str(out / "saved_model"), json.dumps(texts)],
        capture_output=True,
        text=True,
        env=cli_env(),
        check=True,
    )
    answer = json.loads(served.stdout.strip().splitlines()[-1])
    found = []
    for i, text in enumerate(texts):
        count = answer["entity_count"][i]
        spans = [
            (answer["entity_label"][i][e], answer["entity_start"][i][e], answer["entity_end"][i][e])
            for e in range(count)
        ]
        assert [answer["entity_text"][i][e] for e in range(count)] == [
            text[s:e] for _, s, e in spans
        ]
        # The graph's chunks are the Python `entities` of the served word tags.
        tags = answer["word_tags"][i][: answer["word_count"][i]]
        starts, ends = answer["word_start"][i], answer["word_end"][i]
        assert spans == [(t, starts[a], ends[b - 1]) for t, a, b in entities(tags, "bio")]
        found.append(spans)
    alice, number = texts[0].index("Alice"), texts[0].index("12")
    assert alice == 12 and len(texts[0][:alice].encode()) == 14  # characters, not bytes
    assert found[0] == [("PER", alice, alice + len("Alice Smith")), ("NUM", number, number + 5)]
    assert found[1] == [("PER", 12, 15), ("NUM", 20, 21)]
    assert found[2] == [] and answer["word_count"][2] == 0


@pytest.mark.slow
def test_token_classification_two_workers_resume_step_exact(tmp_path):
    cfg = _config(tmp_path)
    cfg["data"] = {"train": _write_jsonl(tmp_path / "train.jsonl", 200, 3), "format": "jsonl"}
    cfg["tokenClassification"] |= {"tokensField": "words", "tagsField": "labels"}
    assert_task_resumes_on_two_workers(cfg, tmp_path)


@pytest.mark.parametrize(
    ("name", "content", "validation", "message"),
    [
        (
            "a.jsonl",
            '{"tokens": ["a", "b"], "tags": ["O", "O"]}\n{"tokens": ["a", "b"], "tags": ["O"]}\n',
            None,
            "data.train: {path}:2: tags has 1 tags but tokens has 2 words",
        ),
        (
            "a.jsonl",
            '{"tokens": ["a"], "tags": ["O"]}\n\n{"tokens": [], "tags": []}\n',
            None,
            "data.train: {path}:3: tokens is empty",
        ),
        (
            "a.conll",
            "the O\ncat O\n\nAlice\n",
            None,
            "data.train: {path}:4: one column 'Alice': expected a word and a tag",
        ),
        (
            "a.conll",
            "the O\nAlice X-PER\n",
            None,
            "data.train: {path}:2: tag 'X-PER' is not O or B-/I-TYPE",
        ),
        (
            "a.conll",
            "the O\n\nAlice B-PER\nSmith E-PER\n",
            None,
            "data.train: {path}:4: tag 'E-PER' is not O or B-/I-TYPE "
            "(tokenClassification.scheme bio)",
        ),
        (
            "a.conll",
            "the O\nAlice B-PER\n",
            "the O\n\nParis B-LOC\n",
            "data.validation: {path}:3: tag 'B-LOC' does not occur in data.train",
        ),
    ],
)
def test_token_classification_bad_rows_name_file_and_line(
    tmp_path, name, content, validation, message
):
    cfg = _config(tmp_path)
    fmt = name.split(".")[1]
    train = tmp_path / name
    train.write_text(content)
    cfg["data"] = {"train": str(train), "format": fmt}
    path = train
    if validation is not None:
        path = tmp_path / f"valid.{fmt}"
        path.write_text(validation)
        cfg["data"]["validation"] = str(path)
    message_text = failed_training(cfg, tmp_path)
    assert message.format(path=path) in message_text
