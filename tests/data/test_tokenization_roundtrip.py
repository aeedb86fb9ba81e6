"""The round-trip check on a re-tokenized boundary: a row it cannot meet is refused by name.

The released tokenizers in ``test_real_tokenizers.py`` always meet it (byte-level BPE decodes
by concatenation, SentencePiece after the continuation re-tokenization). A WordPiece decoder,
as BERT's, joins word pieces with spaces, so a word split across the boundary cannot be read
back: that is the case here, with a vocabulary small enough to write down.
"""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tether.data.records import PreferenceRecord
from tether.data.tokenization import tokenize_records
from tether.errors import DataError


def wordpiece() -> PreTrainedTokenizerFast:
    # "xt" is a word, so the "x" separator merges with the answer as well as "\n" vanishes.
    vocab = {"[UNK]": 0, "[SEP]": 1, "the": 2, "ca": 3, "cat": 4, "t": 5, "sat": 6, "x": 7, "xt": 8}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="[SEP]", unk_token="[UNK]")


def test_boundary_that_cannot_round_trip_is_refused_naming_the_row():
    tok = wordpiece()
    assert tok("the ca")["input_ids"] == [2, 3] and tok("the cat sat")["input_ids"] == [2, 4, 6]
    # "t sat" on its own is [t, sat]: after [the, ca] it reads "the ca t sat", not "the cat sat"
    assert tok.decode([2, 3, 5, 6]) == "the ca t sat"
    rows = [PreferenceRecord("the ca", "t sat", "", "pairs.jsonl:12")]
    with pytest.raises(DataError, match=r"^pairs\.jsonl:12: the answer's tokens cannot follow"):
        tokenize_records(tok, rows, chat=False, max_length=32)


def test_boundary_on_a_word_break_is_kept():
    (row,), audit = tokenize_records(
        wordpiece(), [PreferenceRecord("the cat", " sat", "", "pairs.jsonl:1")], chat=False,
        max_length=32,
    )
    assert (row.prompt, row.chosen, audit.retokenized) == ([2, 4], [6, 1], 0)
