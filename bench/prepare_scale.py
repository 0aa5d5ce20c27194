"""Corpus-scale `berth-trainer prepare`: MB/s of input and peak memory as the corpus grows, one
process against two, against Hugging Face `tokenizers` tokenizing the same text (the anchor)
and, with `--before REV`, against an earlier Berth, side by side in one run.

    .venv/bin/python bench/prepare_scale.py                        # 20, 60 and 200 MB, 2 rounds
    .venv/bin/python bench/prepare_scale.py --sizes 20 60 --rounds 1 --before 16c248c

The corpora: grammar sentences (berth_trainer.synthetic), one to five per line, 3-10 lines per
document, as in bench/packing.py, `--sizes` MB each. The vocabulary is learned by
`berth-trainer vocab --size V` from a 2 MB sample; the grammar has ~50 words, so a large V
would hold every word whole: the default V = 80 splits words into ~1.4 word pieces each, about
what BERT's vocabulary does to English Wikipedia (the header prints the figure).

Each figure is one process, `--rounds` times, the sides alternating; the table shows medians
(peak RSS: the maximum). Per size: `berth-trainer prepare` at sequence length 128 with
fullSentences (and segmentPairs + nextSentence on the smallest corpus), then the anchor
(`BertWordPieceTokenizer(vocab, lowercase=True).encode_batch` over batches of 4096 lines,
add_special_tokens=False, nothing written), with the library's default threads and with
one (TOKENIZERS_PARALLELISM=false: `encode_batch` runs sequentially). On the middle
corpus, `--workers 2` with both workers at once: aggregate MB/s over the slower worker's wall
time, each worker's RSS, and a check that the two workers' shards hold exactly the non-padding
tokens of the one-process run. `--before REV` runs REV's prepare (from a detached git worktree
outside the checkout, removed at the end) on the smallest corpus beside this one's.

- wall: the process's start to its exit (TensorFlow's import included; MB/s (wall) is input
  MB over it); logged: the `mb_per_second` of prepare's last log line (its own clock, from
  after start-up) or, for the anchor, MB over its tokenizing loop.
- CPU s: user + system seconds of the process (above wall: more than one core was busy).
- peak RSS: the process's maximum resident set (`ru_maxrss` from `os.wait4`).
- load1 beside each figure: the machine's one-minute load average when that run ended.
NOT measured: reading from object storage (the input is a local file in the page cache),
masking (done at training time), the Indexed Job on a cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from berth_trainer import synthetic

ROOT = Path(__file__).resolve().parents[1]
#: Lines the anchor encodes per call (the same batch as Berth's tokenizer).
BATCH_LINES = 4096


def write_corpus(path: Path, megabytes: float, seed: int) -> dict[str, int]:
    """`megabytes` MB of documents of 3-10 lines of 1-5 grammar sentences, written as they are
    made; returns the corpus's bytes and words."""
    rng = random.Random(seed)
    size, words, target = 0, 0, int(megabytes * 1e6)
    with path.open("w", encoding="utf-8") as f:
        while size < target:
            lines = [
                " ".join(synthetic.sentence(rng) for _ in range(rng.randint(1, 5)))
                for _ in range(rng.randint(3, 10))
            ]
            text = "\n".join(lines) + "\n\n"
            f.write(text)
            size += len(text)
            words += sum(len(line.split()) for line in lines)
    return {"bytes": size, "words": words}


def child(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {})),
    )


def reap(proc: subprocess.Popen, started: float, what: str) -> dict:
    """Wait for `proc`: its wall and CPU seconds, peak RSS (GiB) and last JSON line."""
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # reaped here, for its own resource usage
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    if code or not lines:
        raise SystemExit(f"{what}: exit {code}\n{out[-3000:]}")
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss": usage.ru_maxrss / 2**20,
        "last": lines[-1],
        "load": os.getloadavg()[0],
    }


def prepare_argv(
    corpus: str, vocab: str, out: str, seq: int, nsp: bool, worker: int = 0, workers: int = 1
) -> list[str]:
    argv = [sys.executable, "-m", "berth_trainer", "prepare", "--vocabulary", vocab]
    argv += ["--input", corpus, "--output", out, "--sequence-length", str(seq)]
    argv += ["--termination-log", os.path.join(os.path.dirname(out), f"worker-{worker}.term")]
    if workers > 1:  # an earlier Berth may not know the flags
        argv += ["--worker", str(worker), "--workers", str(workers)]
    if nsp:
        return [*argv, "--packing", "segmentPairs", "--sentence-prediction", "nextSentence"]
    return [*argv, "--packing", "fullSentences"]


def prepare(
    corpus: dict, vocab: str, out: Path, seq: int, nsp: bool = False, src: str | None = None
) -> dict:
    """One `berth-trainer prepare` of the whole corpus (from source tree `src` if given)."""
    out.mkdir(parents=True)
    env = {"PYTHONPATH": src} if src else None
    started = time.monotonic()
    proc = child(prepare_argv(corpus["path"], vocab, str(out / "train"), seq, nsp), env)
    run = reap(proc, started, f"prepare {corpus['path']} ({src or 'this tree'})")
    run["mb"] = corpus["bytes"] / 1e6
    run["logged"] = run["last"].get("mb_per_second")
    run["examples"] = run["last"]["examples"]
    return run


def prepare_workers(corpus: dict, vocab: str, out: Path, seq: int, workers: int) -> dict:
    """`--workers N` with all N workers at once: aggregate MB/s and each worker's figures."""
    out.mkdir(parents=True)
    started = time.monotonic()
    argv = [
        prepare_argv(corpus["path"], vocab, str(out / "train"), seq, False, i, workers)
        for i in range(workers)
    ]
    procs = [child(a) for a in argv]
    runs = [reap(p, started, f"prepare worker {i}") for i, p in enumerate(procs)]
    mb = corpus["bytes"] / 1e6
    return {
        "mb": mb,
        "wall": max(r["wall"] for r in runs),
        "cpu": sum(r["cpu"] for r in runs),
        "rss": max(r["rss"] for r in runs),
        "rss_each": [r["rss"] for r in runs],
        "logged": sum(r["last"]["mb_per_second"] for r in runs),
        "examples": sum(r["last"]["examples"] for r in runs),
        "load": max(r["load"] for r in runs),
    }


#: Run in a TensorFlow subprocess: non-padding tokens and word pieces ([PAD], [CLS], [SEP]
#: left out) of the packed records matching argv[1] (sequence length argv[2], vocab argv[3]).
COUNT_TOKENS = """
import glob, sys
import tensorflow as tf
from berth_trainer.corpus.records import parse_packed
vocab = open(sys.argv[3], encoding="utf-8").read().split()
pad, cls, sep = (vocab.index(t) for t in ("[PAD]", "[CLS]", "[SEP]"))
files = sorted(glob.glob(sys.argv[1]))
ids = tf.data.TFRecordDataset(files).map(parse_packed(int(sys.argv[2]))).batch(4096)
real = pieces = 0
for x in ids:
    t = x["token_ids"]
    real += int(tf.math.count_nonzero(t != pad))
    pieces += int(tf.math.count_nonzero((t != pad) & (t != cls) & (t != sep)))
print(real, pieces)
"""


def tokens_in(pattern: str, seq: int, vocab: str) -> tuple[int, int]:
    """(non-padding tokens, word pieces) of the shards matching `pattern`."""
    proc = subprocess.run(
        [sys.executable, "-c", COUNT_TOKENS, pattern, str(seq), vocab],
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        check=False,
    )
    if proc.returncode:
        raise SystemExit(f"counting tokens in {pattern}: {proc.stderr[-2000:]}")
    real, pieces = proc.stdout.split()[-2:]
    return int(real), int(pieces)


def anchor(corpus: dict, vocab: str, one_thread: bool = False) -> dict:
    """The anchor in its own process (this file with `--anchor`; it imports only `tokenizers`),
    with the library's default threads or, `one_thread`, its sequential path."""
    env = {"TOKENIZERS_PARALLELISM": "false", "RAYON_NUM_THREADS": "1"} if one_thread else None
    started = time.monotonic()
    argv = [sys.executable, __file__, "--anchor", corpus["path"], vocab]
    run = reap(child(argv, env), started, f"anchor {corpus['path']}")
    run["mb"] = corpus["bytes"] / 1e6
    run["logged"] = run["last"]["mb_per_second"]
    run["examples"] = None
    run["tokens"] = run["last"]["tokens"]
    return run


def anchor_main(corpus: str, vocab: str) -> None:
    """Tokenize `corpus` with Hugging Face's WordPiece, a batch of lines per call; print one
    JSON line: MB/s over the loop (reading included) and the word pieces."""
    from tokenizers import BertWordPieceTokenizer

    tokenizer = BertWordPieceTokenizer(vocab, lowercase=True)
    started, size, tokens = time.monotonic(), 0, 0
    with open(corpus, encoding="utf-8") as f:
        batch: list[str] = []
        for line in f:
            size += len(line.encode())
            if line := line.strip():
                batch.append(line)
            if len(batch) == BATCH_LINES:
                tokens += sum(len(e.ids) for e in tokenizer.encode_batch(batch, False))
                batch = []
        tokens += sum(len(e.ids) for e in tokenizer.encode_batch(batch, False))
    seconds = time.monotonic() - started
    print(json.dumps({"mb_per_second": round(size / seconds / 1e6, 2), "tokens": tokens}))


def worktree(rev: str, parent: Path) -> Path:
    path = parent / "berth-before"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev],
        check=True,
        capture_output=True,
    )
    return path


def remove_worktree(path: Path) -> None:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False
    )
    subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=False)


def learn_vocab(work: Path, size: int) -> str:
    sample = work / "vocab-sample.txt"
    write_corpus(sample, 2, seed=1)
    vocab = work / "vocab.txt"
    argv = [sys.executable, "-m", "berth_trainer", "vocab", "--input", str(sample)]
    argv += ["--output", str(vocab), "--size", str(size)]
    reap(child(argv), time.monotonic(), "vocab")
    return str(vocab)


def fmt(runs: list[dict], key: str, spec: str, agg=statistics.median) -> str:
    values = [r[key] for r in runs if r.get(key) is not None]
    return format(agg(values), spec) if values else "-"


def row(label: str, runs: list[dict]) -> str:
    mb = runs[0]["mb"]
    wall = statistics.median(r["wall"] for r in runs)
    rss = fmt(runs, "rss", ".2f", max)
    if "rss_each" in runs[0]:
        each = zip(*(r["rss_each"] for r in runs), strict=True)
        rss = " / ".join(f"{max(w):.2f}" for w in each)
    loads = [r["load"] for r in runs]
    cells = [
        label,
        f"{mb:.0f}",
        f"{wall:.1f}",
        f"{mb / wall:.2f}",
        fmt(runs, "logged", ".2f"),
        fmt(runs, "cpu", ".0f"),
        rss,
        fmt(runs, "examples", ",.0f"),
        f"{min(loads):.1f}-{max(loads):.1f}",
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[20, 60, 200], help="MB")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=80)
    parser.add_argument("--before", help="a git revision whose prepare runs beside this one")
    parser.add_argument("--workdir", help="where corpora and shards go (default: a temp dir)")
    parser.add_argument("--anchor", nargs=2, metavar=("CORPUS", "VOCAB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.anchor:
        return anchor_main(*args.anchor)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="berth-prepare-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    before = worktree(args.before, work) if args.before else None
    try:
        run_all(args, work, before)
    finally:
        if before:
            remove_worktree(before)


def run_all(args: argparse.Namespace, work: Path, before: Path | None) -> None:
    load_start = os.getloadavg()[0]
    sizes = sorted(args.sizes)
    vocab = learn_vocab(work, args.vocab_size)
    corpora = {}
    for mb in sizes:
        path = work / f"corpus-{mb:g}MB.txt"
        corpora[mb] = {"path": str(path), **write_corpus(path, mb, seed=int(mb))}
    small, middle = sizes[0], sizes[len(sizes) // 2] if len(sizes) > 1 else sizes[0]
    results: dict[str, list[dict]] = {}
    checks: list[tuple[tuple[int, int], tuple[int, int]]] = []

    def add(key: str, run: dict) -> None:
        results.setdefault(key, []).append(run)
        print(f"{key}: {run['wall']:.1f} s, {run['rss']:.2f} GiB, load1 {run['load']:.1f}")

    src = str(before / "trainer" / "src") if before else None
    for r in range(args.rounds):
        for mb in sizes:
            c = corpora[mb]
            if before and mb == small:
                add(
                    f"before {mb:g}",
                    prepare(c, vocab, work / f"before-{mb:g}-{r}", args.seq, src=src),
                )
            out = work / f"ours-{mb:g}-{r}"
            add(f"ours {mb:g}", prepare(c, vocab, out, args.seq))
            one = (
                tokens_in(str(out / "train*"), args.seq, vocab) if mb == middle and r == 0 else None
            )
            shutil.rmtree(out)
            add(f"anchor {mb:g}", anchor(c, vocab))
            add(f"anchor1 {mb:g}", anchor(c, vocab, one_thread=True))
            if mb == small:
                out = work / f"nsp-{mb:g}-{r}"
                add(f"nsp {mb:g}", prepare(c, vocab, out, args.seq, nsp=True))
                shutil.rmtree(out)
            if mb == middle:
                out = work / f"two-{mb:g}-{r}"
                add(f"two {mb:g}", prepare_workers(c, vocab, out, args.seq, 2))
                if one is not None:
                    checks.append((one, tokens_in(str(out / "train*"), args.seq, vocab)))
                shutil.rmtree(out)
        shutil.rmtree(work / f"before-{small:g}-{r}", ignore_errors=True)
    report(args, corpora, vocab, results, checks, load_start, before is not None)
    if not args.workdir:
        shutil.rmtree(work)


def report(args, corpora, vocab, results, checks, load_start, has_before) -> None:
    first = next(iter(corpora.values()))
    anchor_tokens = results[f"anchor {min(corpora):g}"][0]["tokens"]
    pieces = anchor_tokens / first["words"]
    print(
        f"\nsequence length {args.seq}, vocabulary of {args.vocab_size} ({pieces:.2f} word "
        f"pieces per word), {args.rounds} round(s), medians; {os.cpu_count()} CPUs, load1 "
        f"{load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end\n"
    )
    print(
        "| run | input MB | wall s | MB/s (wall) | MB/s (logged) | CPU s | peak RSS GiB "
        "| examples | load1 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    small = min(corpora)
    labels = {
        "before": f"prepare fullSentences, {args.before}",
        "ours": "prepare fullSentences",
        "nsp": "prepare segmentPairs + nextSentence",
        "two": "prepare fullSentences, 2 workers at once (RSS each)",
        "anchor": "anchor: HF tokenizers, tokenize only",
        "anchor1": "anchor: HF tokenizers, tokenize only, 1 thread",
    }
    for kind, label in labels.items():
        for mb in corpora:
            if f"{kind} {mb:g}" in results:
                print(row(label, results[f"{kind} {mb:g}"]))
    print()
    for mb in corpora:
        ours = statistics.median(r["logged"] for r in results[f"ours {mb:g}"])
        ref = statistics.median(r["logged"] for r in results[f"anchor {mb:g}"])
        one = statistics.median(r["logged"] for r in results[f"anchor1 {mb:g}"])
        print(
            f"{mb:g} MB: ours / anchor (logged MB/s) = {ours / ref:.2f}; "
            f"ours / anchor with 1 thread = {ours / one:.2f}"
        )
    if has_before:
        old = statistics.median(r["wall"] for r in results[f"before {small:g}"])
        new = statistics.median(r["wall"] for r in results[f"ours {small:g}"])
        print(f"{small:g} MB: wall before / after = {old:.1f} / {new:.1f} s = {old / new:.2f}x")
    for one, two in checks:
        for i, what in enumerate(("non-padding tokens", "word pieces ([CLS], [SEP] left out)")):
            verdict = "same" if one[i] == two[i] else f"differ by {two[i] - one[i]:+,}"
            print(f"{what}: 1 process {one[i]:,}, 2 workers {two[i]:,}: {verdict}")


if __name__ == "__main__":
    main()
