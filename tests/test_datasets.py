"""Datasets from local copies: every supported form, the exact preprocessing, disjointness and one-line errors."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import pytest

from romer.data import (
    check_disjoint,
    load_dataset_documents,
    load_dataset_text,
    load_documents,
    load_text,
    text_overlap,
)
from romer.data.datasets import wikitext_pages
from romer.data.offline import ENV_VARS, offline
from romer.errors import UserError

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"
# wiki.test.raw as Hugging Face's wikitext builder yields it: one row per line, newline kept, blank lines as "".
WIKI_ROWS = ["", " = Alpha Page = \n", "", " Alpha is the first letter . \n", "", " = = Usage = = \n", "",
             " It starts words . \n", "", " = Beta Page = \n", "", " Beta comes second . \n"]
WIKI_PAGES = [" = Alpha Page = \n Alpha is the first letter . \n = = Usage = = \n It starts words . \n",
              " = Beta Page = \n Beta comes second . \n"]
LAMBADA = ["The cat sat on the mat and looked at the dog. The dog barked at the cat",
           "She opened the door, and the wind blew the door"]


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and message
    return message


def write_parquet(path: Path, records: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


# --- WikiText: GPTQ text and document-level pages, from every form -------------------------------------------------

def test_wikitext_raw_file_gives_gptq_text_and_pages():
    path = FIXTURES / "wiki.test.raw"
    assert load_dataset_text("wikitext2", path) == "\n\n".join(WIKI_ROWS)
    assert load_dataset_documents("wikitext2", path) == WIKI_PAGES


def test_wikitext_pages_split_at_level_one_headings_only():
    assert wikitext_pages(["a\n", " = T = \n", "b\n", " = = Sub = = \n", " = U = \n"]) == \
        ["a\n", " = T = \nb\n = = Sub = = \n", " = U = \n"]


def test_wikitext_folder_picks_the_split_file(tmp_path):
    folder = tmp_path / "wikitext-2-raw"  # as unzipped from wikitext-2-raw-v1.zip
    folder.mkdir()
    for name in ("wiki.test.raw", "wiki.valid.raw"):
        shutil.copy(FIXTURES / name, folder / name)
    assert load_dataset_text("wikitext103", folder, split="validation") == "\n\n".join(["", " = Gamma = \n", "",
                                                                                         " Validation line . \n"])
    assert load_dataset_text("wikitext2", folder) == "\n\n".join(WIKI_ROWS)  # split test by default


def test_wikitext_parquet_save_to_disk_and_hub_cache_agree(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub.constants

    records = [{"text": row} for row in WIKI_ROWS]
    parquet = write_parquet(tmp_path / "wikitext-2-raw-v1" / "test-00000-of-00001.parquet", records)
    assert load_dataset_text("wikitext2", parquet) == "\n\n".join(WIKI_ROWS)

    saved = tmp_path / "saved"
    datasets.DatasetDict({"test": datasets.Dataset.from_list(records)}).save_to_disk(str(saved))
    assert load_dataset_documents("wikitext2", saved) == WIKI_PAGES
    with pytest.raises(UserError) as err:
        load_dataset_text("wikitext2", saved, split="train")
    assert "no split 'train'" in one_line(err)

    # The Hub cache layout (datasets--owner--name/refs/main → snapshots/<commit>/…), found with no network.
    commit = "0" * 40
    repo = tmp_path / "hub" / "datasets--Salesforce--wikitext"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(tmp_path / "wikitext-2-raw-v1", repo / "snapshots" / commit / "wikitext-2-raw-v1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert load_dataset_text("wikitext2") == "\n\n".join(WIKI_ROWS)
    with pytest.raises(UserError) as err:  # wikitext-103 is not in that cache
        load_dataset_text("wikitext103")
    assert "not in the local Hugging Face cache" in one_line(err)


def test_document_level_page_column_taken_as_is(tmp_path):
    path = tmp_path / "pages.jsonl"
    path.write_text("".join(json.dumps({"page": p}) + "\n" for p in WIKI_PAGES))
    assert load_dataset_documents("wikitext2", path) == WIKI_PAGES
    assert load_dataset_text("wikitext2", path) == "\n\n".join(WIKI_PAGES)


# --- LAMBADA, C4, the user's text, the bundled corpus ----------------------------------------------------------------

def test_lambada_jsonl_and_parquet():
    assert load_dataset_documents("lambada", FIXTURES / "lambada_test.jsonl") == LAMBADA
    assert load_dataset_text("lambada", FIXTURES / "lambada_test.jsonl") == "\n\n".join(LAMBADA)


def test_c4_json_gz_shard(tmp_path):
    shard = tmp_path / "c4-validation.00000-of-00008.json.gz"
    rows = [{"text": "First web page.", "timestamp": "2019", "url": "a"}, {"text": "Second page.", "url": "b"}]
    with gzip.open(shard, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    assert load_dataset_documents("c4", shard) == ["First web page.", "Second page."]
    assert load_dataset_text("c4", tmp_path) == "First web page.\n\nSecond page."  # folder: the validation shards
    with pytest.raises(UserError) as err:
        load_dataset_text("c4", shard, split="test")
    assert "no split 'test'" in one_line(err)


def test_own_text_file_is_one_document_and_parquet_column_found(tmp_path):
    text = (FIXTURES / "own.txt").read_text(encoding="utf-8")
    assert load_dataset_documents("text", FIXTURES / "own.txt") == [text]
    assert load_dataset_text("text", FIXTURES / "own.txt") == text
    parquet = write_parquet(tmp_path / "mine.parquet", [{"id": 1, "body": "one"}, {"id": 2, "body": "two"}])
    assert load_dataset_documents("text", parquet) == ["one", "two"]  # the only text column


def test_bundled_is_todays_corpus():
    assert load_dataset_text() == load_text("test")
    assert load_dataset_documents(split="validation") == [d.text for d in load_documents("validation")]


# --- calibration vs evaluation text ------------------------------------------------------------------------------------

def test_overlap_fraction_by_hand():
    # calibration 2-grams {(a,b), (b,c)}; evaluation has (b,c) only → 1/2
    assert text_overlap("a b c", "x b c", n=2) == 0.5
    assert text_overlap("a b c", "c b a", n=2) == 0.0


def test_calibration_equal_to_or_inside_evaluation_refused():
    test = load_dataset_text(split="test")
    with pytest.raises(UserError) as err:
        check_disjoint(test, test)
    assert "is the evaluation text" in one_line(err)
    with pytest.raises(UserError) as err:
        check_disjoint(test[1000:50000], test)
    assert "contain one another" in one_line(err)
    shuffled = "\n\n".join(reversed(load_dataset_documents(split="test")[:20]))
    with pytest.raises(UserError) as err:
        check_disjoint(shuffled, test)
    assert "32-word passages occur in the evaluation text" in one_line(err)  # all but those across boundaries


def test_bundled_train_and_test_are_disjoint():
    assert check_disjoint(load_dataset_text(split="train")[:300_000], load_dataset_text(split="test")) < 0.01


# --- one-line errors ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, suffix, expected", [
    ("a,b\n1,2\n", ".csv", "unsupported file type '.csv'"),
    ("{not json\n", ".jsonl", "not valid JSON lines"),
    ("not parquet at all", ".parquet", "not a readable parquet file"),
    ("", ".jsonl", "the dataset is empty"),
    ('{"text": "  "}\n', ".jsonl", "has no text"),
    ('{"a": 1, "b": 2}\n', ".jsonl", "no text column"),
])
def test_wrong_format_or_empty_is_one_line_error(tmp_path, content, suffix, expected):
    path = tmp_path / f"data{suffix}"
    path.write_text(content)
    with pytest.raises(UserError) as err:
        load_dataset_text("text", path)
    assert expected in one_line(err)


def test_missing_path_unknown_name_and_missing_argument(tmp_path):
    with pytest.raises(UserError) as err:
        load_dataset_text("wikitext2", tmp_path / "nowhere" / "wiki.test.raw")
    assert "no such file or folder" in one_line(err)
    with pytest.raises(UserError) as err:
        load_dataset_text("wikitext5")
    assert "unknown dataset 'wikitext5'" in one_line(err)
    with pytest.raises(UserError) as err:
        load_dataset_text("text")
    assert "needs a path" in one_line(err)
    with pytest.raises(UserError) as err:
        load_dataset_text("wikitext2", tmp_path)  # a folder without a test file
    assert "no data file for split 'test'" in one_line(err)


def test_offline_scope_sets_and_restores_switches(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    before_env = {name: os.environ.get(name) for name in ENV_VARS}
    before_flag = huggingface_hub.constants.HF_HUB_OFFLINE
    with offline():
        assert all(os.environ[name] == "1" for name in ENV_VARS)
        assert huggingface_hub.constants.HF_HUB_OFFLINE is True
    assert {name: os.environ.get(name) for name in ENV_VARS} == before_env
    assert huggingface_hub.constants.HF_HUB_OFFLINE == before_flag
