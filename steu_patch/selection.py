"""Select the vocabulary tokens whose input-embedding rows a forget patch edits.

Each token is scored by document-level, frequency-weighted pointwise mutual information (PMI)
with the forget class::

    score(t) = log2(P(t | forget) / P(t)) * ln(1 + n_f(t))

``P(t | forget) = n_f(t) / N_f`` is the share of forget documents that contain ``t`` and
``P(t) = n(t) / N`` the share of all documents that contain it. Counting documents rather than
occurrences keeps one long note that repeats a word from dominating. The ``ln(1 + n_f)`` factor
favours tokens that many forget documents share over tokens that only a few contain.

Only tokens with a positive score are selected: a score of zero or below means the token is no more
common in forget documents than in the corpus as a whole, so it is not associated with the forget
class. Tokens found in fewer than ``min_doc_freq`` forget documents are never selected either. A
token that rare could identify a single patient, and a patch both edits and publishes its selected
tokens.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from .errors import DataError

logger = logging.getLogger(__name__)

# Number of documents per presence matrix that select_tokens builds and sums at a time.
_COUNT_CHUNK_DOCUMENTS = 1024


@dataclass(frozen=True)
class TokenScore:
    """One selected token with its PMI score and document counts."""

    token_id: int
    token: str
    score: float
    forget_doc_count: int
    doc_count: int


@dataclass(frozen=True)
class TokenSelection:
    """Tokens selected for a forget patch, ranked by score, and the corpus they were scored on."""

    scores: tuple[TokenScore, ...]
    forget_documents: int
    total_documents: int
    top_k: int
    min_doc_freq: int
    eligible_tokens: int

    @property
    def token_ids(self) -> list[int]:
        """Selected token ids in rank order (highest score first)."""
        return [entry.token_id for entry in self.scores]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dictionary of the selection."""
        return {
            "forget_documents": self.forget_documents,
            "total_documents": self.total_documents,
            "top_k": self.top_k,
            "min_doc_freq": self.min_doc_freq,
            "eligible_tokens": self.eligible_tokens,
            "selected_tokens": len(self.scores),
            "scores": [
                {
                    "token_id": entry.token_id,
                    "token": entry.token,
                    "score": entry.score,
                    "forget_doc_count": entry.forget_doc_count,
                    "doc_count": entry.doc_count,
                }
                for entry in self.scores
            ],
        }


def document_token_matrix(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    max_length: int | None = None,
    batch_size: int = 256,
    show_progress: bool = False,
) -> torch.Tensor:
    """Build a boolean matrix that marks which token ids occur in each document.

    Args:
        tokenizer: the model's tokenizer. Special tokens are added as the model would see them.
        texts: the documents.
        max_length: truncate each document to this many tokens, special tokens included, as the
            model does. ``None`` counts whole documents.
        batch_size: documents tokenised per call to the tokenizer.
        show_progress: show a progress bar on stderr.

    Returns:
        A ``torch.bool`` tensor of shape ``(len(texts), len(tokenizer))``. A token that occurs
        several times in a document is marked once.

    Raises:
        DataError: if ``batch_size`` is below 1 or a text is not a string.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}; pass a positive batch size.")
    vocab_size = len(tokenizer)
    presence = torch.zeros((len(texts), vocab_size), dtype=torch.bool)
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="Counting tokens", unit="batch", disable=not show_progress):
        batch = list(texts[start : start + batch_size])
        _check_strings(batch, start)
        encoded = tokenizer(
            batch,
            add_special_tokens=True,
            truncation=max_length is not None,
            max_length=max_length,
            verbose=False,  # silences the warning for documents longer than the model's maximum length
        )
        id_lists = encoded["input_ids"]

        # Flatten the batch into (row, token id) pairs so one indexed assignment marks every token.
        lengths = torch.tensor([len(ids) for ids in id_lists], dtype=torch.int64)
        token_ids = torch.tensor(list(itertools.chain.from_iterable(id_lists)), dtype=torch.int64)
        rows = torch.repeat_interleave(torch.arange(start, start + len(batch)), lengths)
        presence[rows, token_ids] = True
    return presence


def _check_strings(batch: list[Any], offset: int) -> None:
    for position, text in enumerate(batch):
        if not isinstance(text, str):
            raise DataError(
                f"Text {offset + position} is {type(text).__name__}, not str; "
                "remove or fill missing texts before selecting tokens."
            )


def score_tokens(
    presence: torch.Tensor, forget_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score every token id by frequency-weighted PMI with the forget documents.

    Args:
        presence: ``(num_documents, vocab_size)`` boolean matrix from :func:`document_token_matrix`.
        forget_mask: ``(num_documents,)`` boolean tensor, true for forget documents.

    Returns:
        ``(scores, forget_doc_counts, doc_counts)``. ``scores`` is float64 and is ``-inf`` for
        tokens absent from every forget document. The counts are int64 numbers of documents.

    Raises:
        DataError: if the shapes disagree, or if there are no forget or no retained documents.
    """
    if presence.dim() != 2 or presence.dtype != torch.bool:
        raise DataError(
            f"presence must be a 2-D torch.bool tensor, got {presence.dim()}-D {presence.dtype}; "
            "build it with document_token_matrix()."
        )
    if forget_mask.dim() != 1 or forget_mask.dtype != torch.bool or forget_mask.shape[0] != presence.shape[0]:
        raise DataError(
            f"forget_mask must be a 1-D torch.bool tensor with one entry per document ({presence.shape[0]}), "
            f"got shape {tuple(forget_mask.shape)} and dtype {forget_mask.dtype}."
        )
    _check_classes(forget_mask)

    forget_doc_counts, doc_counts = _count_documents(presence, forget_mask)
    scores = _pmi_scores(forget_doc_counts, doc_counts, int(forget_mask.sum()), presence.shape[0])
    return scores, forget_doc_counts, doc_counts


def _count_documents(presence: torch.Tensor, forget_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    forget_doc_counts = presence[forget_mask].sum(dim=0, dtype=torch.int64)
    doc_counts = presence.sum(dim=0, dtype=torch.int64)
    return forget_doc_counts, doc_counts


def _pmi_scores(
    forget_doc_counts: torch.Tensor, doc_counts: torch.Tensor, forget_documents: int, total_documents: int
) -> torch.Tensor:
    n_f = forget_doc_counts.to(torch.float64)
    n = doc_counts.to(torch.float64)
    ratio = (n_f / forget_documents) / (n / total_documents)
    scores = torch.log2(ratio) * torch.log1p(n_f)
    # Tokens absent from forget documents get -inf rather than NaN (0/0 for tokens found nowhere).
    minus_infinity = torch.tensor(float("-inf"), dtype=torch.float64)
    return torch.where(forget_doc_counts > 0, scores, minus_infinity)


def _check_classes(forget_mask: torch.Tensor) -> None:
    total_documents = forget_mask.shape[0]
    forget_documents = int(forget_mask.sum())
    if total_documents == 0:
        raise DataError("No documents were given, so no token can be scored; pass the training texts.")
    if forget_documents == 0:
        raise DataError(
            f"None of the {total_documents} documents belongs to the forget class, so no token can be "
            "scored; check the forget label and that the data contains examples of it."
        )
    if forget_documents == total_documents:
        raise DataError(
            f"All {forget_documents} documents belong to the forget class, so a single class cannot be "
            "contrasted and every token would score 0; include documents of the retained classes."
        )


def select_tokens(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    forget_mask: Sequence[bool] | torch.Tensor,
    *,
    top_k: int = 256,
    min_doc_freq: int = 5,
    max_length: int | None = None,
    vocab_size: int | None = None,
    show_progress: bool = False,
) -> TokenSelection:
    """Select the ``top_k`` tokens most associated with the forget class.

    Args:
        tokenizer: the model's tokenizer. Its special tokens are never selected.
        texts: all training documents, forget and retained.
        forget_mask: one boolean per document, true for forget documents.
        top_k: maximum number of tokens to select.
        min_doc_freq: minimum number of forget documents a token must occur in.
        max_length: truncate documents to this many tokens before counting. ``None`` counts whole
            documents.
        vocab_size: number of rows of the model's input-embedding matrix. Token ids at or above it
            cannot be edited and are never selected. ``None`` uses ``len(tokenizer)``.
        show_progress: show a progress bar on stderr while counting.

    Returns:
        The selected tokens ranked by score, then by forget-document count (descending), then by
        token id (ascending). Fewer than ``top_k`` when fewer tokens are eligible.

    Raises:
        DataError: on invalid ``top_k`` or ``min_doc_freq``, when there are no forget or no
            retained documents, or when no token is eligible.
    """
    mask = _forget_mask_tensor(forget_mask, len(texts))
    usable_ids = _usable_vocab_size(tokenizer, vocab_size)
    _check_limits(top_k, min_doc_freq, usable_ids)
    _check_classes(mask)

    forget_doc_counts, doc_counts = _count_in_chunks(tokenizer, texts, mask, max_length, show_progress)
    scores = _pmi_scores(forget_doc_counts, doc_counts, int(mask.sum()), len(texts))

    eligible = (forget_doc_counts >= min_doc_freq) & (scores > 0)
    eligible[usable_ids:] = False
    special_ids = [i for i in tokenizer.all_special_ids if i is not None and 0 <= i < eligible.shape[0]]
    eligible[special_ids] = False
    eligible_ids = torch.nonzero(eligible).flatten()
    _check_eligible(len(eligible_ids), top_k, min_doc_freq)

    ranked = _rank(eligible_ids, scores, forget_doc_counts)[:top_k]
    tokens = tokenizer.convert_ids_to_tokens(ranked)
    selected = tuple(
        TokenScore(
            token_id=token_id,
            token=token,
            score=float(scores[token_id]),
            forget_doc_count=int(forget_doc_counts[token_id]),
            doc_count=int(doc_counts[token_id]),
        )
        for token_id, token in zip(ranked, tokens)
    )
    logger.info(
        "Selected %d of %d eligible tokens from %d documents (%d forget).",
        len(selected), len(eligible_ids), len(texts), int(mask.sum()),
    )
    return TokenSelection(
        scores=selected,
        forget_documents=int(mask.sum()),
        total_documents=len(texts),
        top_k=top_k,
        min_doc_freq=min_doc_freq,
        eligible_tokens=len(eligible_ids),
    )


def _count_in_chunks(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    forget_mask: torch.Tensor,
    max_length: int | None,
    show_progress: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    # Counting chunk by chunk bounds memory to one chunk's presence matrix (documents x vocabulary bytes)
    # instead of the whole corpus's. Each document is still tokenised exactly once.
    forget_doc_counts = torch.zeros(len(tokenizer), dtype=torch.int64)
    doc_counts = torch.zeros(len(tokenizer), dtype=torch.int64)
    starts = range(0, len(texts), _COUNT_CHUNK_DOCUMENTS)
    for start in tqdm(starts, desc="Counting tokens", unit="chunk", disable=not show_progress):
        stop = start + _COUNT_CHUNK_DOCUMENTS
        presence = document_token_matrix(tokenizer, texts[start:stop], max_length=max_length)
        chunk_forget, chunk_all = _count_documents(presence, forget_mask[start:stop])
        forget_doc_counts += chunk_forget
        doc_counts += chunk_all
    return forget_doc_counts, doc_counts


def _forget_mask_tensor(forget_mask: Sequence[bool] | torch.Tensor, num_texts: int) -> torch.Tensor:
    mask = torch.as_tensor(forget_mask)
    if mask.dim() != 1 or mask.shape[0] != num_texts:
        raise DataError(
            f"forget_mask has shape {tuple(mask.shape)} but there are {num_texts} texts; "
            "pass one boolean per text."
        )
    if mask.dtype != torch.bool:
        if not torch.all((mask == 0) | (mask == 1)):
            raise DataError("forget_mask must contain only booleans or 0/1 values; pass one boolean per text.")
        mask = mask.to(torch.bool)
    return mask


def _usable_vocab_size(tokenizer: PreTrainedTokenizerBase, vocab_size: int | None) -> int:
    tokenizer_size = len(tokenizer)
    if vocab_size is None:
        return tokenizer_size
    if vocab_size < tokenizer_size:
        logger.warning(
            "The tokenizer has %d tokens but the model has only %d embedding rows; "
            "token ids %d and above cannot be selected.",
            tokenizer_size, vocab_size, vocab_size,
        )
    return min(vocab_size, tokenizer_size)


def _check_limits(top_k: int, min_doc_freq: int, usable_ids: int) -> None:
    if top_k < 1:
        raise DataError(f"top_k must be at least 1, got {top_k}; pass the number of tokens to edit.")
    if top_k > usable_ids:
        raise DataError(
            f"top_k is {top_k} but the vocabulary has only {usable_ids} tokens; "
            f"pass a top_k of at most {usable_ids}."
        )
    if min_doc_freq < 1:
        raise DataError(
            f"min_doc_freq must be at least 1, got {min_doc_freq}; pass the minimum number of forget "
            "documents a token must occur in."
        )


def _check_eligible(eligible_count: int, top_k: int, min_doc_freq: int) -> None:
    if eligible_count == 0:
        raise DataError(
            f"No token occurs in at least {min_doc_freq} forget documents with a positive PMI score; "
            "lower --min-doc-freq or add forget documents."
        )
    if eligible_count < top_k:
        logger.warning(
            "Only %d tokens are eligible (positive score, in at least %d forget documents); "
            "selecting %d instead of top_k=%d.",
            eligible_count, min_doc_freq, eligible_count, top_k,
        )


def _rank(token_ids: torch.Tensor, scores: torch.Tensor, forget_doc_counts: torch.Tensor) -> list[int]:
    ids = token_ids.numpy()
    # np.lexsort sorts by the last key first: score descending, then n_f descending, then id ascending.
    order = np.lexsort((ids, -forget_doc_counts[token_ids].numpy(), -scores[token_ids].numpy()))
    return ids[order].tolist()
