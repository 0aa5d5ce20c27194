"""Reading SQuAD JSON (`data.format: squad`, v1.1 and v2.0) into `Question`s.

The file is the official SQuAD JSON: `{"data": [{"title", "paragraphs": [{"context", "qas":
[{"id", "question", "answers": [{"text", "answer_start"}], "is_impossible"}]}]}]}`. A SQuAD
file is one JSON document, so it is read (`textfiles.read_text`: a UTF-8 BOM dropped, a byte
that is not UTF-8 an error naming its line) and parsed whole; its questions are then encoded a
chunk at a time.

A malformed question is a data error (exit code 3) named by file and line: the line is where
the question's `"id": "..."` stands in the file (its n-th occurrence for the n-th question of
that id; else where its `"question"` text stands; else the line of the question before it).
The official SQuAD files are one line each, so the message names the question id as well.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import json
import re
from collections.abc import Callable
from typing import Any

from berth_trainer.tasks.base import bad_row


@dataclasses.dataclass
class Question:
    """One question of a SQuAD file."""

    id: str
    question: str
    context: str
    #: Gold answer texts (all of them; empty for no answer).
    answers: list[str]
    #: Character offset of the first answer in the context (-1: no answer).
    answer_start: int
    #: `file:line` of the question (found when needed: only for an error).
    where: Callable[[], str]


class _Lines:
    """Line numbers of questions in a JSON text, found lazily (only for an error)."""

    def __init__(self, content: str, path: str) -> None:
        self.content, self.path = content, path
        self._starts: list[int] | None = None

    def line_of(self, key: str, value: Any, nth: int = 0) -> int | None:
        """Line of the `nth` occurrence of `"key": value` (as JSON, either escaping)."""
        try:
            forms = {json.dumps(value), json.dumps(value, ensure_ascii=False)}
        except (TypeError, ValueError):
            return None
        pattern = re.compile(rf'"{re.escape(key)}"\s*:\s*(?:{"|".join(map(re.escape, forms))})')
        for i, match in enumerate(pattern.finditer(self.content)):
            if i == nth:
                if self._starts is None:
                    self._starts = [0] + [m.end() for m in re.finditer("\n", self.content)]
                return bisect.bisect_right(self._starts, match.start())
        return None

    def at(self, line: int) -> str:
        return f"{self.path}:{line}"


def parse_squad(content: str, path: str, field: str, allow_no_answer: bool) -> list[Question]:
    """The questions of one SQuAD JSON file; a malformed one is a `bad_row` naming file and
    line (see the module docstring)."""
    try:
        doc = json.loads(content)
    except json.JSONDecodeError as err:
        raise bad_row(field, f"{path}:{err.lineno}", f"invalid JSON: {err.msg}") from err
    lines = _Lines(content, path)
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise bad_row(field, lines.at(1), 'not SQuAD JSON: no list "data" at the top level')
    out: list[Question] = []
    # How many questions before had the same "id" (and "question"): the n-th question with
    # an id is at its n-th occurrence in the text.
    seen: collections.Counter = collections.Counter()
    last: list[tuple[Any, dict[str, int]]] = []  # the question before, for a fallback

    def count(qa: Any) -> dict[str, int]:
        nth = {}
        for key in ("id", "question"):
            if isinstance(qa, dict) and isinstance(qa.get(key), str | int):
                nth[key] = seen[key, json.dumps(qa[key])]
                seen[key, json.dumps(qa[key])] += 1
        return nth

    def find(qa: Any, nth: dict[str, int]) -> int | None:
        for key, n in nth.items():
            line = lines.line_of(key, qa[key], n)
            if line is not None:
                return line
        return None

    def where(qa: Any, nth: dict[str, int]) -> str:
        line = find(qa, nth)
        if line is None and last:
            line = find(*last[-1])
        return lines.at(line or 1)

    for article in doc["data"]:
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            title = article.get("title") if isinstance(article, dict) else None
            line = lines.line_of("title", title) if title is not None else None
            at = lines.at(line) if line else where(None, {})
            raise bad_row(field, at, 'an article without a list "paragraphs"')
        for paragraph in paragraphs:
            qas = paragraph.get("qas") if isinstance(paragraph, dict) else None
            context = paragraph.get("context") if isinstance(paragraph, dict) else None
            if not isinstance(qas, list):
                raise bad_row(field, where(None, {}), 'a paragraph without a list "qas"')
            if not isinstance(context, str):
                first = qas[0] if qas else None
                at = where(first, count(first))
                raise bad_row(field, at, 'a paragraph without a string "context"')
            for qa in qas:
                nth = count(qa)
                out.append(
                    _question(qa, context, field, allow_no_answer, lambda q=qa, k=nth: where(q, k))
                )
                last[:] = [(qa, nth)]
    return out


def _question(qa: Any, context: str, field: str, allow_no_answer: bool, where) -> Question:
    if not isinstance(qa, dict):
        raise bad_row(field, where(), "a question that is not a JSON object")
    impossible = qa.get("is_impossible") is True
    answers = qa.get("answers", [] if impossible else None)
    missing = [k for k in ("id", "question") if not isinstance(qa.get(k), str | int)]
    missing += ["answers"] if answers is None else []
    if missing:
        raise bad_row(field, where(), f"question {qa.get('id')!r}: missing key(s) {missing}")
    qid, text = str(qa["id"]), str(qa["question"])
    if not isinstance(answers, list) or not all(isinstance(a, dict) for a in answers):
        raise bad_row(field, where(), f'question {qid!r}: "answers" is not a list of objects')
    if impossible or not answers:
        if not allow_no_answer:
            why = "is_impossible: true (SQuAD v2.0)" if impossible else "an empty answers list"
            raise bad_row(
                field,
                where(),
                f"question {qid!r} has no answer ({why}); set questionAnswering.allowNoAnswer: "
                "true to train on questions without an answer",
            )
        return Question(qid, text, context, [], -1, where)
    absent = [k for k in ("text", "answer_start") if k not in answers[0]]
    absent += ["text"] if any("text" not in a for a in answers[1:]) and "text" not in absent else []
    if absent:
        raise bad_row(field, where(), f"question {qid!r}: an answer without key(s) {absent}")
    gold = [str(a["text"]) for a in answers]
    first, start = gold[0], answers[0]["answer_start"]
    if not isinstance(start, int) or isinstance(start, bool) or start < 0:
        raise bad_row(field, where(), f"question {qid!r}: answer_start {start!r} is not an offset")
    if not first.strip():
        raise bad_row(field, where(), f"question {qid!r}: answer {first!r} is empty")
    if context[start : start + len(first)] != first:
        raise bad_row(
            field,
            where(),
            f"question {qid!r}: answer {first!r} is not at answer_start {start} of its context "
            f"(which has {context[start : start + len(first)]!r} there)",
        )
    return Question(qid, text, context, gold, start, where)
