"""Build romer's two bundled zero-shot tasks from the bundled corpus's test split (public domain; see DATA.md).

Usage:  python scripts/build_zero_shot_tasks.py [--out romer/eval/tasks] [--seed 0]

Both tasks come from ``romer.data.load_documents("test")`` (Austen chapters and KJV chapters), cut into sentences
(:func:`sentences`). Output, one JSON object per line, written atomically and byte-identical for a given seed:

* ``romer_cloze.jsonl``: LAMBADA-style last-word cloze, ``{"text": passage}`` as in ``lambada_openai``. A passage is
  consecutive sentences of one document, ``MIN_WORDS``..``MAX_WORDS`` words, cut so that it ends with a word of at
  least three letters (the sentence's final punctuation removed) that already occurred, as a whole word with the
  same spelling, earlier in the passage. Passages do not overlap. ``CLOZE_ITEMS`` of them are drawn with the seeded
  generator and kept in corpus order. Scored by greedy match of the target word's tokens.
* ``romer_nextsent.jsonl``: 4-way continuation choice, ``{"context", "choices", "label", "doc"}``. A sentence of
  ``MIN_SENTENCE_WORDS``..``MAX_SENTENCE_WORDS`` words is cut at its middle word; the context is the
  ``CONTEXT_SENTENCES`` sentences before it plus its first half; the true choice is its second half; the three
  distractors are second halves of other sentences of the same document, at least ``MIN_DISTANCE`` sentences away,
  each 0.8–1.25 × the true half's length in characters (so length alone does not give the answer away); the gold
  position is drawn uniformly. ``NEXTSENT_ITEMS`` items, at most one per cut sentence, drawn with the seeded
  generator, kept in corpus order. Chance: 25 %. (Whole next sentences as choices left the zoo models near
  chance, 25–30 % on 200 items; cutting mid-sentence makes the task easier.)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from romer.data import load_documents  # noqa: E402
from romer.io import write_text_atomic  # noqa: E402

CLOZE_ITEMS = 300
MIN_WORDS, MAX_WORDS = 30, 80
NEXTSENT_ITEMS = 300
CONTEXT_SENTENCES = 2
MIN_DISTANCE = 5
MIN_SENTENCE_WORDS, MAX_SENTENCE_WORDS = 8, 40
ABBREVIATIONS = ("Mr.", "Mrs.", "Dr.", "St.", "Col.", "Capt.")
_BOUNDARY = re.compile(r"(?<=[.!?;:])[\"')\]]*\s+|\n+")
_WORD = re.compile(r"[A-Za-z]+")


def sentences(text: str) -> list[str]:
    """Sentences of a document: cut after . ! ? ; : (and any closing quote) or at a line break, abbreviations kept."""
    pieces, start = [], 0
    for match in _BOUNDARY.finditer(text):
        piece = text[start : match.end()].strip()
        if piece and not piece.endswith(ABBREVIATIONS):
            pieces.append(piece)
            start = match.end()
    tail = text[start:].strip()
    if tail:
        pieces.append(tail)
    return pieces


def _cloze_end(passage: str) -> str | None:
    """The passage cut before its final punctuation if its last word qualifies as a cloze target, else None."""
    stripped = re.sub(r"[^A-Za-z]+$", "", passage)
    match = re.search(r"(?:^|\s)([A-Za-z]+)$", stripped)
    if match is None or len(match.group(1)) < 3:
        return None
    target, context = match.group(1), stripped[: match.start(1)]
    return stripped if target in _WORD.findall(context) else None


def cloze_candidates(docs: list[str]) -> list[str]:
    """Non-overlapping passages of consecutive sentences whose final word occurred earlier in the passage."""
    out = []
    for doc in docs:
        current: list[str] = []
        for sentence in sentences(doc):
            current.append(sentence)
            words = sum(len(s.split()) for s in current)
            if words > MAX_WORDS:
                current = [sentence] if len(sentence.split()) <= MAX_WORDS else []
                words = sum(len(s.split()) for s in current)
            if words >= MIN_WORDS:
                passage = _cloze_end(" ".join(current))
                if passage is not None:
                    out.append(passage)
                    current = []
    return out


def _halves(sentence: str) -> tuple[str, str] | None:
    """A sentence cut at its middle word: (first half, second half); None below ``MIN_SENTENCE_WORDS`` words."""
    words = sentence.split()
    if not MIN_SENTENCE_WORDS <= len(words) <= MAX_SENTENCE_WORDS:
        return None
    middle = len(words) // 2
    return " ".join(words[:middle]), " ".join(words[middle:])


def nextsent_candidates(docs: list[str], rng: np.random.Generator) -> list[dict]:
    """One item per eligible sentence: its context, its true second half and three length-matched distractors."""
    out = []
    for index, doc in enumerate(docs):
        sents = sentences(doc)
        halves = [_halves(s) for s in sents]
        for start in range(len(sents) - CONTEXT_SENTENCES):
            cut = halves[start + CONTEXT_SENTENCES]
            if cut is None:
                continue
            true = cut[1]
            near = range(start - MIN_DISTANCE, start + CONTEXT_SENTENCES + 1 + MIN_DISTANCE)
            pool = list(dict.fromkeys(h[1] for j, h in enumerate(halves) if h is not None and j not in near
                                      and h[1] != true and 0.8 <= len(h[1]) / len(true) <= 1.25))
            if len(pool) < 3:
                continue
            distractors = [pool[i] for i in rng.choice(len(pool), size=3, replace=False)]
            label = int(rng.integers(4))
            choices = distractors[:label] + [true] + distractors[label:]
            out.append({"context": " ".join(sents[start : start + CONTEXT_SENTENCES] + [cut[0]]),
                        "choices": choices, "label": label, "doc": index})
    return out


def sample(items: list, count: int, rng: np.random.Generator) -> list:
    if len(items) < count:
        raise SystemExit(f"only {len(items)} candidates for {count} items")
    return [items[i] for i in sorted(rng.choice(len(items), size=count, replace=False))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "romer" / "eval" / "tasks")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    docs = [d.text for d in load_documents("test")]
    rng = np.random.default_rng(args.seed)
    cloze = sample(cloze_candidates(docs), CLOZE_ITEMS, rng)
    nextsent = sample(nextsent_candidates(docs, rng), NEXTSENT_ITEMS, rng)
    for name, rows in (("romer_cloze", [{"text": t} for t in cloze]), ("romer_nextsent", nextsent)):
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        write_text_atomic(args.out / f"{name}.jsonl", lines)
        print(f"{args.out / f'{name}.jsonl'}: {len(rows)} items")


if __name__ == "__main__":
    main()
