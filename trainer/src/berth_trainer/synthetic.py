"""A small deterministic corpus for the quickstart and the tests: grammar-generated sentences
(so a tiny BERT can learn them in a few hundred steps), its vocab.txt, and an easy
classification set. Imports nothing heavy.

    >>> import tempfile
    >>> paths = write_quickstart_corpus(tempfile.mkdtemp(), seed=0)
    >>> sorted(paths)
    ['classification_train', 'classification_validation', 'corpus', 'vocab']
"""

from __future__ import annotations

import random
from pathlib import Path

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SUBJECTS = ["the cat", "the dog", "a bird", "the child", "my friend", "the teacher", "a fox"]
VERBS = ["sees", "likes", "chases", "finds", "follows", "hears", "watches"]
OBJECTS = ["the ball", "a tree", "the river", "the house", "a book", "the moon", "the road"]
PLACES = ["in the park", "at night", "near the sea", "after school", "in the garden"]
POSITIVE = ["good", "great", "happy", "lovely", "wonderful", "bright"]
NEGATIVE = ["bad", "awful", "sad", "terrible", "gloomy", "broken"]
FILLER = ["the", "day", "was", "very", "and", "it", "felt", "really", "so", "quite"]


def sentence(rng: random.Random) -> str:
    """A subject-verb-object sentence, sometimes with a place: predictable enough for MLM."""
    words = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)]
    if rng.random() < 0.5:
        words.append(rng.choice(PLACES))
    return " ".join(words) + " ."


def labelled(rng: random.Random) -> tuple[str, str]:
    """An easy sentiment example: the label follows the polarity words."""
    label = rng.choice(["positive", "negative"])
    words = POSITIVE if label == "positive" else NEGATIVE
    text = " ".join(rng.choice(FILLER) for _ in range(rng.randint(2, 5)))
    return f"{text} {rng.choice(words)} {rng.choice(FILLER)} {rng.choice(words)}", label


def vocabulary() -> list[str]:
    words: set[str] = {"."}
    for group in (SUBJECTS, VERBS, OBJECTS, PLACES, POSITIVE, NEGATIVE, FILLER):
        for phrase in group:
            words.update(phrase.split())
    return SPECIAL + sorted(words)


def write_quickstart_corpus(
    directory: str | Path, seed: int = 0, documents: int = 200, files: int = 2
) -> dict[str, str]:
    """Write corpus-*.txt (one sentence per line, blank line between documents), vocab.txt and
    classification train/validation CSVs; returns their paths (the corpus as a glob)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(files):
        docs = [
            "\n".join(sentence(rng) for _ in range(rng.randint(3, 8)))
            for _ in range(documents // files)
        ]
        (out / f"corpus-{i}.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    (out / "vocab.txt").write_text("".join(t + "\n" for t in vocabulary()), encoding="utf-8")
    for name, n in (("classification_train", 800), ("classification_validation", 200)):
        rows = ["text,label"] + [",".join(labelled(rng)) for _ in range(n)]
        (out / f"{name}.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return {
        "corpus": str(out / "corpus-*.txt"),
        "vocab": str(out / "vocab.txt"),
        "classification_train": str(out / "classification_train.csv"),
        "classification_validation": str(out / "classification_validation.csv"),
    }
