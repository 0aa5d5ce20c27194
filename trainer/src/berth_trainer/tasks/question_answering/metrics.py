"""The official SQuAD v2.0 evaluation script's exact match and F1 (`evaluate-v2.0.py`), as
fractions, not percent."""

from __future__ import annotations

import collections
import re
import string

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(s: str) -> str:
    """Lower case, no punctuation, no articles a/an/the, single spaces (official SQuAD).

    >>> normalize_answer("The  Denver Broncos!")
    'denver broncos'
    """
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token F1 of the normalized answers; an empty side scores 1 only against empty."""
    predicted, wanted = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not wanted:
        return float(predicted == wanted)
    same = sum((collections.Counter(predicted) & collections.Counter(wanted)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(wanted)
    return 2 * precision * recall / (precision + recall)


def squad_scores(
    predictions: list[str], golds: list[list[str]], allow_no_answer: bool = False
) -> dict[str, float]:
    """Exact match and F1 (fractions), each the max over a question's gold answers (gold
    answers that normalize to "" dropped, none → [""]), averaged over questions; with
    `allow_no_answer` also over questions with (`has_answer_*`) and without (`no_answer_*`) an
    answer.

    >>> squad_scores(["Denver Broncos", "a cat"], [["Denver Broncos"], ["the cat", "dog"]])
    {'exact_match': 1.0, 'f1': 1.0}
    """
    em: list[float] = []
    f1: list[float] = []
    has: list[bool] = []
    for prediction, answers in zip(predictions, golds, strict=True):
        answers = [a for a in answers if normalize_answer(a)] or [""]
        em.append(max(exact_match(prediction, a) for a in answers))
        f1.append(max(f1_score(prediction, a) for a in answers))
        has.append(answers != [""])
    out = {"exact_match": _mean(em), "f1": _mean(f1)}
    if allow_no_answer:
        for name, keep in (("has_answer", True), ("no_answer", False)):
            chosen = [i for i, h in enumerate(has) if h == keep]
            if chosen:
                out[f"{name}_exact_match"] = _mean([em[i] for i in chosen])
                out[f"{name}_f1"] = _mean([f1[i] for i in chosen])
    return out


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 4) if values else 0.0
