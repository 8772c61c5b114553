"""Zero-shot task configs romer ships (``romer/eval/tasks/*.yaml``) and the local records each one reads.

Each shipped task is an lm-eval 0.4.13 task config without a data source; :func:`task_config` adds one, a
``custom_dataset`` callable returning the records read here from a local file (so lm-eval never looks for the
Hub). The public formats accepted, per task (:data:`TASK_FILES`):

- ``arc_easy`` / ``arc_challenge``: the AI2 release's ``ARC-*-Test.jsonl`` (``question.stem``, ``question.choices``
  ``[{text, label}]``, ``answerKey``) or the ``allenai/ai2_arc`` Hub layout (``question``, ``choices {text, label}``,
  ``answerKey``: jsonl, parquet, save_to_disk). Both are turned into the Hub layout.
- ``piqa``: ``valid.jsonl`` (``goal``, ``sol1``, ``sol2``) with ``valid-labels.lst`` beside it (the PIQA release), or
  records carrying ``label``.
- ``lambada_openai``: ``lambada_test.jsonl``, ``{"text": passage}`` per line.
- ``romer_cloze`` / ``romer_nextsent``: bundled (built by ``scripts/build_zero_shot_tasks.py``), no path needed.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from romer.data.formats import read_records
from romer.errors import UserError

TASK_DIR = Path(__file__).resolve().parent / "tasks"
BUNDLED_TASKS = ("romer_cloze", "romer_nextsent")
TASK_FILES = {
    "arc_easy": "ARC-Easy-Test.jsonl (AI2 release) or allenai/ai2_arc ARC-Easy test (jsonl / parquet / save_to_disk)",
    "arc_challenge": "ARC-Challenge-Test.jsonl (AI2 release) or allenai/ai2_arc ARC-Challenge test",
    "piqa": "PIQA valid.jsonl with valid-labels.lst beside it, or records with a label field",
    "lambada_openai": "lambada_test.jsonl: one {\"text\": passage} per line",
    "romer_cloze": "bundled with romer",
    "romer_nextsent": "bundled with romer",
}


def shipped_tasks() -> tuple[str, ...]:
    """Names of the task configs romer ships."""
    return tuple(sorted(p.stem for p in TASK_DIR.glob("*.yaml")))


def _require_fields(records: list[dict], fields: tuple[str, ...], task: str, source: str) -> None:
    if not records:
        raise UserError(f"{source}: task {task!r} has no records")
    missing = [f for f in fields if f not in records[0]]
    if missing:
        raise UserError(f"{source}: not {task} data (no {', '.join(missing)} field; expected {TASK_FILES[task]})")


def arc_records(path: str | Path, task: str = "arc_easy") -> list[dict]:
    """ARC questions in the ``allenai/ai2_arc`` layout: id, question, choices {text, label}, answerKey."""
    records = read_records(path, "test")
    _require_fields(records, ("question", "answerKey"), task, str(path))
    out = []
    for r in records:
        if isinstance(r["question"], dict):  # AI2 release: {"question": {"stem", "choices": [{"text", "label"}]}}
            choices = r["question"].get("choices", [])
            r = {"id": r.get("id"), "question": r["question"].get("stem"),
                 "choices": {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]},
                 "answerKey": r["answerKey"]}
        elif "choices" not in r:
            raise UserError(f"{path}: not {task} data (a record has no choices; expected {TASK_FILES[task]})")
        if r["answerKey"] not in r["choices"]["label"]:
            raise UserError(f"{path}: question {r.get('id')!r} has answerKey {r['answerKey']!r} not among its labels")
        out.append({"id": r.get("id"), "question": r["question"], "choices": dict(r["choices"]),
                    "answerKey": r["answerKey"]})
    return out


def _piqa_labels(path: Path) -> Path:
    if path.is_file():
        candidate = path.with_name(path.name.split(".")[0] + "-labels.lst")
        if candidate.exists():
            return candidate
    else:
        found = sorted(path.glob("*valid*-labels.lst"))
        if found:
            return found[0]
    raise UserError(f"{path}: PIQA records have no label and no labels file (valid-labels.lst) lies beside them")


def piqa_records(path: str | Path) -> list[dict]:
    """PIQA validation records: goal, sol1, sol2, label (0 or 1), labels read from ``*-labels.lst`` if separate."""
    path = Path(path).expanduser()
    records = read_records(path, "validation")
    _require_fields(records, ("goal", "sol1", "sol2"), "piqa", str(path))
    if "label" not in records[0]:
        labels_path = _piqa_labels(path)
        labels = [line.strip() for line in labels_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(labels) != len(records):
            raise UserError(f"{labels_path}: {len(labels)} labels for {len(records)} PIQA records")
        records = [{**r, "label": label} for r, label in zip(records, labels)]
    try:
        return [{"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(r["label"])} for r in records]
    except (TypeError, ValueError):
        raise UserError(f"{path}: PIQA labels must be 0 or 1") from None


def text_records(path: str | Path, task: str) -> list[dict]:
    """LAMBADA-format records: ``{"text": passage}``, the last space-separated word the target."""
    records = read_records(path, "test")
    _require_fields(records, ("text",), task, str(path))
    return [{"text": r["text"]} for r in records]


def nextsent_records(path: str | Path) -> list[dict]:
    records = read_records(path, "test")
    _require_fields(records, ("context", "choices", "label"), "romer_nextsent", str(path))
    return [{"context": r["context"], "choices": list(r["choices"]), "label": int(r["label"])} for r in records]


def task_records(task: str, path: str | Path | None = None) -> list[dict]:
    """The records of a shipped task, from ``path`` (or, for a bundled task, from the file shipped beside it)."""
    if task not in TASK_FILES:
        raise UserError(f"romer ships no task config {task!r}; it ships {', '.join(shipped_tasks())}")
    if path is None:
        if task not in BUNDLED_TASKS:
            raise UserError(f"task {task!r} needs the path of its local data: {TASK_FILES[task]}")
        path = TASK_DIR / f"{task}.jsonl"
        if not path.exists():
            raise UserError(f"{path}: bundled task data missing; run scripts/build_zero_shot_tasks.py")
    if task in ("arc_easy", "arc_challenge"):
        return arc_records(path, task)
    if task == "piqa":
        return piqa_records(path)
    if task == "romer_nextsent":
        return nextsent_records(path)
    return text_records(path, task)


def task_config(task: str, path: str | Path | None = None) -> dict:
    """The lm-eval config dict of a shipped task, its ``custom_dataset`` serving the local records as split test.

    The records are read (and checked) now, so a missing or malformed file fails before any evaluation.
    """
    records = task_records(task, path)
    config = yaml.safe_load((TASK_DIR / f"{task}.yaml").read_text(encoding="utf-8"))

    def dataset(**_metadata):
        import datasets

        return datasets.DatasetDict({"test": datasets.Dataset.from_list(records)})

    return {**config, "custom_dataset": dataset}
