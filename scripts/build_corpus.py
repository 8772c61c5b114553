"""Regenerate romer's bundled corpus byte-for-byte from two Debian packages.

Sources (both public domain, see DATA.md):
  * Jane Austen's six novels, from ``r-cran-janeaustenr`` 1.0.0-1 (an R lazy-load database, read with
    the PyPI package ``rdata``; R itself is not needed);
  * the King James Version, from ``bible-kjv`` 4.38 (its ``bible`` command prints the text).

Usage (as root on Debian 12; the script downloads / installs the pinned packages itself):
    python scripts/build_corpus.py [--out romer/data/corpus]

Documents are chapters. Splits are assigned per document (never per line):
  * Austen: chapter index i (0-based, within its novel) goes to test when i % 20 == 7, to validation when
    i % 20 == 13, else to train;
  * KJV: whole books are held out (``TEST_BOOKS``, ``VALIDATION_BOOKS``).
Each split is written as ``{split}.jsonl.xz``: one JSON object per document with keys
``source``, ``title``, ``text``, in source order, xz preset 9 (deterministic output).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import re
import subprocess
import sys
import tempfile
import warnings
import zlib
from collections import Counter
from pathlib import Path

AUSTEN_PACKAGE = "r-cran-janeaustenr=1.0.0-1"
KJV_PACKAGE = "bible-kjv=4.38"
NOVELS = {  # R object name -> title, in the package's order
    "sensesensibility": "Sense and Sensibility",
    "prideprejudice": "Pride and Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
TEST_BOOKS = ("Joshua", "Luke")
VALIDATION_BOOKS = ("Judges", "Acts")
SPLITS = ("train", "validation", "test")
CHAPTER_HEADING = re.compile(r"^(CHAPTER|Chapter)\s+[IVXLC\d]+\.?$")
VERSE = re.compile(r"^\s+\d+ (.*)$")


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, **kw)


def austen_lines(workdir: Path) -> dict[str, list[str]]:
    """Novel name -> its lines, read from the package's R lazy-load database (zlib blocks, 4-byte header)."""
    import rdata

    _run(["apt-get", "download", AUSTEN_PACKAGE], cwd=workdir)
    deb = next(workdir.glob("r-cran-janeaustenr_*.deb"))
    _run(["dpkg-deb", "-x", str(deb), str(workdir / "pkg")])
    data = workdir / "pkg/usr/lib/R/site-library/janeaustenr/data"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index = rdata.conversion.convert(rdata.parser.parse_file(data / "Rdata.rdx"))["variables"]
        blob = (data / "Rdata.rdb").read_bytes()
        novels = {}
        for name in NOVELS:
            offset, length = (int(v) for v in index[name])
            raw = zlib.decompress(blob[offset + 4 : offset + length])
            novels[name] = [str(x) for x in rdata.conversion.convert(rdata.parser.parse_data(raw))]
    return novels


def paragraphs(lines: list[str]) -> str:
    """Unwrap hard-wrapped prose: a paragraph's lines joined by single spaces, paragraphs by newlines."""
    paras, current = [], []
    for line in lines + [""]:
        line = line.strip()
        if line:
            current.append(line)
        elif current:
            paras.append(re.sub(r" {2,}", " ", " ".join(current)))
            current = []
    return "\n".join(paras)


def austen_documents(novels: dict[str, list[str]]) -> list[dict]:
    """One document per chapter; front matter and volume headings are dropped."""
    docs = []
    for name, title in NOVELS.items():
        chapters: list[list[str]] = []
        for line in novels[name]:
            if CHAPTER_HEADING.match(line.strip()):
                chapters.append([])
            elif chapters and not re.match(r"^\s*VOLUME\s+[IVX]+\s*$", line, re.I):
                chapters[-1].append(line)
        for i, body in enumerate(chapters):
            split = "test" if i % 20 == 7 else "validation" if i % 20 == 13 else "train"
            text = paragraphs(body).replace("_", "")  # underscores mark italics in the source
            docs.append({"source": "austen", "title": f"{title}, chapter {i + 1}", "text": text, "split": split})
    return docs


def kjv_documents() -> list[dict]:
    """One document per chapter, one verse per line, verse numbers stripped; held-out books by name."""
    out = _run(["bible", "-l0", "gen1:1-rev22:21"], text=True).stdout
    docs, title, verses = [], None, []

    def flush():
        if title is not None:
            book = title.rsplit(" ", 1)[0]
            split = "test" if book in TEST_BOOKS else "validation" if book in VALIDATION_BOOKS else "train"
            docs.append({"source": "kjv", "title": title, "text": "\n".join(verses), "split": split})

    for line in out.splitlines():
        m = VERSE.match(line)
        if m:
            verses.append(m.group(1).strip())
        elif line.strip():
            flush()
            title, verses = line.strip(), []
    flush()
    return docs


def leak_report(docs: list[dict]) -> dict:
    """Lines of held-out text that also occur verbatim in train, and the most repeated held-out line."""
    train_lines = Counter(l for d in docs if d["split"] == "train" for l in d["text"].split("\n"))
    report = {}
    for split in ("validation", "test"):
        lines = [l for d in docs if d["split"] == split for l in d["text"].split("\n")]
        shared = [l for l in lines if l in train_lines]
        report[split] = {"lines": len(lines), "shared_with_train": len(shared),
                         "shared_chars": sum(map(len, shared)), "chars": sum(map(len, lines)),
                         "longest_shared": max(shared, key=len, default="")}
        most = Counter(lines).most_common(1)
        report[split]["most_repeated_line_count"] = most[0][1] if most else 0
    return report


def drop_lines_seen_in_train(docs: list[dict]) -> int:
    """Remove held-out lines that occur verbatim in train (parallel gospel verses, scene-break stars)."""
    train_lines = {l for d in docs if d["split"] == "train" for l in d["text"].split("\n")}
    dropped = 0
    for d in docs:
        if d["split"] != "train":
            lines = d["text"].split("\n")
            kept = [l for l in lines if l not in train_lines]
            dropped += len(lines) - len(kept)
            d["text"] = "\n".join(kept)
    return dropped


def write_splits(docs: list[dict], out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for split in SPLITS:
        rows = [{k: d[k] for k in ("source", "title", "text")} for d in docs if d["split"] == split]
        payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
        packed = lzma.compress(payload, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=9)
        tmp = out / f".{split}.jsonl.xz.tmp"
        tmp.write_bytes(packed)
        tmp.replace(out / f"{split}.jsonl.xz")
        summary[split] = {
            "documents": len(rows),
            "by_source": dict(Counter(r["source"] for r in rows)),
            "bytes_utf8": sum(len(r["text"].encode("utf-8")) for r in rows),
            "words": sum(len(r["text"].split()) for r in rows),
            "xz_bytes": len(packed),
            "sha256_xz": hashlib.sha256(packed).hexdigest(),
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "romer/data/corpus")
    args = parser.parse_args(argv)
    subprocess.run(["apt-get", "install", "-y", "-q", KJV_PACKAGE], check=True, capture_output=True)
    with tempfile.TemporaryDirectory() as tmp:
        docs = austen_documents(austen_lines(Path(tmp))) + kjv_documents()
    dropped = drop_lines_seen_in_train(docs)
    summary = write_splits(docs, args.out)
    report = {"splits": summary, "held_out_lines_dropped": dropped, "leaks": leak_report(docs)}
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
