"""Tests for token selection by frequency-weighted PMI."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from transformers import BertTokenizerFast

from steu_patch import selection
from steu_patch.errors import DataError
from steu_patch.selection import TokenSelection, document_token_matrix, score_tokens, select_tokens

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# "beta" comes before "alpha" so that id order differs from alphabetical order.
WORDS = ["beta", "alpha", "gamma", "fever", "cough", "rash", "zebra", "the", "patient", "with", "knee", "fracture", "cast"]

# Five forget and five retained documents. Document counts (forget / all):
# fever 5/5, rash 3/3, cough 4/5, [UNK] 2/2, zebra 1/1, the 3/7, patient 3/7, with 1/3.
FORGET_TEXTS = [
    "fever cough rash the patient",
    "fever cough rash with the",
    "fever cough the patient",
    "fever rash patient unlistedword",
    "fever cough zebra otherunlisted",
]
RETAIN_TEXTS = [
    "knee fracture the patient",
    "knee cast with the patient",
    "fracture cast the",
    "knee fracture cast patient cough",
    "the patient with knee",
]
TEXTS = FORGET_TEXTS + RETAIN_TEXTS
FORGET_MASK = [True] * len(FORGET_TEXTS) + [False] * len(RETAIN_TEXTS)


@pytest.fixture()
def tokenizer(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(SPECIAL_TOKENS + WORDS) + "\n", encoding="utf-8")
    return BertTokenizerFast.from_pretrained(tmp_path)


def token_id(tokenizer, word: str) -> int:
    return tokenizer.convert_tokens_to_ids(word)


def test_distinctive_tokens_rank_first(tokenizer):
    result = select_tokens(tokenizer, TEXTS, FORGET_MASK, top_k=3, min_doc_freq=2)

    assert [entry.token for entry in result.scores] == ["fever", "rash", "cough"]
    assert result.token_ids == [token_id(tokenizer, w) for w in ("fever", "rash", "cough")]


def test_score_matches_formula(tokenizer):
    result = select_tokens(tokenizer, TEXTS, FORGET_MASK, top_k=3, min_doc_freq=2)
    cough = next(entry for entry in result.scores if entry.token == "cough")
    # cough is in 4 of 5 forget documents and in 5 of 10 documents overall.
    expected = math.log2((4 / 5) / (5 / 10)) * math.log(1 + 4)

    assert cough.forget_doc_count == 4
    assert cough.doc_count == 5
    # A few ulps of slack: torch's vectorised log2 may round differently from libm's.
    assert cough.score == pytest.approx(expected, rel=1e-15, abs=0)


def test_score_tokens_matches_formula(tokenizer):
    presence = document_token_matrix(tokenizer, TEXTS)
    scores, forget_counts, counts = score_tokens(presence, torch.tensor(FORGET_MASK))
    fever = token_id(tokenizer, "fever")

    assert scores.dtype == torch.float64
    assert forget_counts[fever] == 5
    assert counts[fever] == 5
    assert scores[fever].item() == pytest.approx(math.log2(2.0) * math.log(6), rel=1e-15, abs=0)


def test_absent_tokens_score_minus_inf(tokenizer):
    presence = document_token_matrix(tokenizer, TEXTS)
    scores, _, _ = score_tokens(presence, torch.tensor(FORGET_MASK))

    assert scores[token_id(tokenizer, "knee")].item() == float("-inf")
    assert scores[token_id(tokenizer, "gamma")].item() == float("-inf")
    assert not torch.isnan(scores).any()


def test_special_tokens_never_selected(tokenizer):
    unk = tokenizer.unk_token_id
    presence = document_token_matrix(tokenizer, TEXTS)
    scores, forget_counts, _ = score_tokens(presence, torch.tensor(FORGET_MASK))
    result = select_tokens(tokenizer, TEXTS, FORGET_MASK, top_k=10, min_doc_freq=1)

    # [UNK] occurs only in forget documents, so without the exclusion it would rank second.
    assert forget_counts[unk] == 2
    assert scores[unk] > 0
    assert not set(result.token_ids) & set(tokenizer.all_special_ids)


def test_min_doc_freq_excludes_rare_token(tokenizer):
    zebra = token_id(tokenizer, "zebra")
    strict = select_tokens(tokenizer, TEXTS, FORGET_MASK, top_k=3, min_doc_freq=2)
    loose = select_tokens(tokenizer, TEXTS, FORGET_MASK, top_k=10, min_doc_freq=1)

    assert zebra not in strict.token_ids
    assert zebra in loose.token_ids


def test_non_positive_scores_never_selected(tokenizer):
    result = select_tokens(tokenizer, TEXTS, FORGET_MASK, top_k=10, min_doc_freq=1)
    selected = set(result.token_ids)

    # "the" and "patient" are in 3 of 5 forget documents but 7 of 10 documents, a ratio below 1.
    assert token_id(tokenizer, "the") not in selected
    assert token_id(tokenizer, "patient") not in selected
    assert all(entry.score > 0 for entry in result.scores)


def test_top_k_larger_than_vocabulary(tokenizer):
    too_many = len(tokenizer) + 1
    with pytest.raises(DataError) as error:
        select_tokens(tokenizer, TEXTS, FORGET_MASK, top_k=too_many)

    assert str(too_many) in str(error.value)
    assert str(len(tokenizer)) in str(error.value)


def test_top_k_limited_by_model_vocab_size(tokenizer):
    with pytest.raises(DataError, match="only 6 tokens"):
        select_tokens(tokenizer, TEXTS, FORGET_MASK, top_k=7, vocab_size=6)


def test_top_k_below_one(tokenizer):
    with pytest.raises(DataError, match="top_k must be at least 1"):
        select_tokens(tokenizer, TEXTS, FORGET_MASK, top_k=0)


def test_min_doc_freq_below_one(tokenizer):
    with pytest.raises(DataError, match="min_doc_freq must be at least 1"):
        select_tokens(tokenizer, TEXTS, FORGET_MASK, top_k=3, min_doc_freq=0)


def test_no_forget_documents(tokenizer):
    with pytest.raises(DataError, match="None of the 10 documents belongs to the forget class"):
        select_tokens(tokenizer, TEXTS, [False] * len(TEXTS), top_k=3)


def test_single_class_cannot_be_contrasted(tokenizer):
    with pytest.raises(DataError, match="single class cannot be contrasted"):
        select_tokens(tokenizer, FORGET_TEXTS, [True] * len(FORGET_TEXTS), top_k=3)


def test_score_tokens_single_class(tokenizer):
    presence = document_token_matrix(tokenizer, FORGET_TEXTS)
    with pytest.raises(DataError, match="single class cannot be contrasted"):
        score_tokens(presence, torch.ones(len(FORGET_TEXTS), dtype=torch.bool))


def test_no_documents(tokenizer):
    with pytest.raises(DataError, match="No documents"):
        select_tokens(tokenizer, [], [], top_k=3)


def test_forget_mask_length_mismatch(tokenizer):
    with pytest.raises(DataError, match="there are 10 texts"):
        select_tokens(tokenizer, TEXTS, FORGET_MASK[:-1], top_k=3)


def test_non_string_text(tokenizer):
    texts = TEXTS[:-1] + [None]
    with pytest.raises(DataError, match="Text 9 is NoneType"):
        select_tokens(tokenizer, texts, FORGET_MASK, top_k=3)


def test_fewer_eligible_than_top_k_warns(tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="steu_patch.selection"):
        result = select_tokens(tokenizer, TEXTS, FORGET_MASK, top_k=8, min_doc_freq=2)

    assert len(result.scores) == 3
    assert result.eligible_tokens == 3
    assert "Only 3 tokens are eligible" in caplog.text


def test_zero_eligible_suggests_lower_min_doc_freq(tokenizer):
    with pytest.raises(DataError, match="lower --min-doc-freq"):
        select_tokens(tokenizer, TEXTS, FORGET_MASK, top_k=3, min_doc_freq=6)


def test_selection_is_deterministic(tokenizer):
    first = select_tokens(tokenizer, TEXTS, FORGET_MASK, top_k=10, min_doc_freq=1)
    second = select_tokens(tokenizer, TEXTS, FORGET_MASK, top_k=10, min_doc_freq=1)

    assert first == second


def test_ties_broken_by_token_id(tokenizer):
    texts = ["alpha beta", "beta alpha", "gamma"]
    result = select_tokens(tokenizer, texts, [True, True, False], top_k=2, min_doc_freq=1)

    assert result.scores[0].score == result.scores[1].score
    assert result.token_ids == [token_id(tokenizer, "beta"), token_id(tokenizer, "alpha")]


def test_presence_counts_token_once_per_document(tokenizer):
    presence = document_token_matrix(tokenizer, ["fever fever fever", "knee", "fever knee knee"])
    fever = token_id(tokenizer, "fever")

    assert presence.dtype == torch.bool
    assert presence.shape == (3, len(tokenizer))
    assert presence[:, fever].tolist() == [True, False, True]
    assert presence.sum(dim=0)[token_id(tokenizer, "knee")] == 2


def test_presence_batches_match_single_batch(tokenizer):
    whole = document_token_matrix(tokenizer, TEXTS, batch_size=len(TEXTS))
    batched = document_token_matrix(tokenizer, TEXTS, batch_size=3)

    assert torch.equal(whole, batched)


def test_presence_max_length_truncates(tokenizer):
    # With max_length=3 the model sees [CLS] knee [SEP], so "fever" is not counted.
    presence = document_token_matrix(tokenizer, ["knee fever"], max_length=3)

    assert presence[0, token_id(tokenizer, "knee")]
    assert not presence[0, token_id(tokenizer, "fever")]


def test_presence_includes_added_tokens(tokenizer):
    tokenizer.add_tokens(["newterm"])
    presence = document_token_matrix(tokenizer, ["newterm fever"])

    assert presence.shape[1] == len(SPECIAL_TOKENS) + len(WORDS) + 1
    assert presence[0, len(SPECIAL_TOKENS) + len(WORDS)]


def test_vocab_size_excludes_higher_ids(tokenizer):
    rash = token_id(tokenizer, "rash")
    result = select_tokens(tokenizer, TEXTS, FORGET_MASK, top_k=3, min_doc_freq=2, vocab_size=rash)

    assert rash not in result.token_ids
    assert token_id(tokenizer, "fever") in result.token_ids


def test_chunked_counts_match_full_matrix(tokenizer, monkeypatch):
    monkeypatch.setattr(selection, "_COUNT_CHUNK_DOCUMENTS", 3)
    result = select_tokens(tokenizer, TEXTS, FORGET_MASK, top_k=10, min_doc_freq=1)
    scores, forget_counts, counts = score_tokens(document_token_matrix(tokenizer, TEXTS), torch.tensor(FORGET_MASK))

    for entry in result.scores:
        assert entry.score == scores[entry.token_id].item()
        assert entry.forget_doc_count == forget_counts[entry.token_id].item()
        assert entry.doc_count == counts[entry.token_id].item()


def test_to_dict_lists_ranked_tokens(tokenizer):
    result = select_tokens(tokenizer, TEXTS, FORGET_MASK, top_k=3, min_doc_freq=2)
    data = result.to_dict()

    assert isinstance(result, TokenSelection)
    assert data["forget_documents"] == 5
    assert data["total_documents"] == 10
    assert data["selected_tokens"] == 3
    assert [entry["token"] for entry in data["scores"]] == ["fever", "rash", "cough"]
