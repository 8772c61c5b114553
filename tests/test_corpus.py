"""The bundled corpus and tokenizer: splits are disjoint by document and by line, and load as documented."""

import re
from collections import Counter

import pytest

from romer.data import SPLITS, load_documents, load_text, load_tokenizer
from romer.data.corpus import DOCUMENT_SEPARATOR
from romer.errors import UserError


@pytest.fixture(scope="module")
def docs():
    return {split: load_documents(split) for split in SPLITS}


def test_documents_are_chapters_in_exactly_one_split(docs):
    titles = [d.title for split in SPLITS for d in docs[split]]
    assert len(titles) == len(set(titles))
    assert {d.source for split in SPLITS for d in docs[split]} == {"austen", "kjv"}
    assert sum(d.source == "austen" for split in SPLITS for d in docs[split]) == 269  # chapters of the six novels
    assert sum(d.source == "kjv" for split in SPLITS for d in docs[split]) == 1189  # chapters of the 66 books


def test_bible_books_are_held_out_whole(docs):
    def books(split):
        return {d.title.rsplit(" ", 1)[0] for d in docs[split] if d.source == "kjv"}

    assert books("test") == {"Joshua", "Luke"}
    assert books("validation") == {"Judges", "Acts"}
    assert not books("train") & (books("test") | books("validation"))


def test_no_held_out_line_occurs_in_train(docs):
    train_lines = {line for d in docs["train"] for line in d.text.split("\n")}
    for split in ("validation", "test"):
        lines = [line for d in docs[split] for line in d.text.split("\n")]
        assert lines and not [line for line in lines if line in train_lines]


def test_held_out_splits_have_no_injected_repeats(docs):
    for split in ("validation", "test"):
        counts = Counter(line for d in docs[split] for line in d.text.split("\n"))
        assert counts.most_common(1)[0][1] <= 2


def test_text_is_clean_prose(docs):
    text = load_text("test")
    assert not re.search(r"^\s*\d+ ", text, re.M), "verse numbers must be stripped"
    austen = load_text("test", source="austen")
    assert "  " not in austen and "_" not in austen  # unwrapped paragraphs, italics markers removed
    assert text.count(DOCUMENT_SEPARATOR) == len(docs["test"]) - 1


def test_unknown_split_is_a_user_error():
    with pytest.raises(UserError, match="unknown split 'dev'"):
        load_documents("dev")


def test_tokenizer_round_trips_and_uses_one_special_token():
    tok = load_tokenizer()
    assert len(tok) == 8192
    assert tok.bos_token_id == tok.eos_token_id == tok.pad_token_id == 0
    sample = load_documents("test")[0].text[:2000]
    ids = tok(sample, add_special_tokens=False)["input_ids"]
    assert 0 not in ids
    assert tok.decode(ids) == sample
    assert len(sample.encode()) / len(ids) > 3.5  # BPE compresses real prose
