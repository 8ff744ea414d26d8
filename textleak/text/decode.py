"""Decoding dummy embeddings to the nearest rows of the model's input-embedding matrix."""

from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

import torch

from ..errors import InputError

METRICS = ("cosine", "l2")
_UNUSED = re.compile(r"^\[unused\d+\]$|^<unused\d+>$")


def allowed_token_ids(tokenizer: Any) -> torch.Tensor:
    """Ids a tokenised sentence can contain between its special tokens.

    Special tokens and BERT's reserved `[unusedN]` rows never occur there, so decoding to them
    would only add wrong answers.
    """
    special = set(tokenizer.all_special_ids)
    vocab = tokenizer.get_vocab()
    ids = [i for tok, i in vocab.items() if i not in special and not _UNUSED.match(tok)]
    return torch.tensor(sorted(ids))


class NearestTokens:
    """Decodes embeddings to the nearest candidate rows of an embedding matrix, with the candidate
    rows prepared (gathered, centred, normalised) once: a search that decodes many times over a
    large vocabulary (LAMP's discrete steps under noise score every proposal against all ~30k
    rows) would otherwise redo that preparation, the bulk of each decode, every time."""

    def __init__(self, matrix: torch.Tensor, candidates: torch.Tensor, metric: str = "cosine"):
        if metric not in METRICS:
            raise InputError(f"unknown decoding metric {metric!r}; choose one of: {', '.join(METRICS)}")
        self.candidates, self.metric = candidates, metric
        rows = matrix[candidates]
        # BERT-style encoders LayerNorm (word + position) embeddings, which removes each vector's
        # mean: a dummy embedding is only determined up to a constant shift, so compare centred vectors.
        rows = rows - rows.mean(-1, keepdim=True)
        self.rows = torch.nn.functional.normalize(rows, dim=-1) if metric == "cosine" else rows

    def __call__(self, embeddings: torch.Tensor) -> torch.Tensor:
        """For each row of `embeddings` [N, H], the id in `candidates` whose row is nearest."""
        embeddings = embeddings - embeddings.mean(-1, keepdim=True)
        if embeddings.numel() == 0:
            return torch.empty(0, dtype=torch.long, device=self.candidates.device)
        if self.metric == "cosine":
            best = (torch.nn.functional.normalize(embeddings, dim=-1) @ self.rows.T).argmax(-1)
        else:
            best = torch.cdist(embeddings, self.rows).argmin(-1)
        return self.candidates[best]


def nearest_tokens(embeddings: torch.Tensor, matrix: torch.Tensor, candidates: torch.Tensor,
                   metric: str = "cosine") -> torch.Tensor:
    """For each row of `embeddings` [N, H], the id in `candidates` whose row of `matrix` is nearest
    (for repeated decoding against one candidate set, build a `NearestTokens` once)."""
    return NearestTokens(matrix, candidates, metric)(embeddings)


def ids_to_text(tokenizer: Any, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=True).strip()


def continuation_pieces(tokenizer: Any, ids: Iterable[int]) -> set[int]:
    """Those of `ids` that continue a word rather than start one: WordPiece's "##" pieces; for
    byte-level BPE (RoBERTa) and SentencePiece (ALBERT, XLM-R), the pieces without the
    word-start mark ("\u0120", "\u2581"). Special tokens never count."""
    ids = [int(i) for i in ids]
    names = [str(t) for t in tokenizer.convert_ids_to_tokens(ids)]
    prefix, mark = _word_marks(tokenizer)
    if prefix is not None:
        return {i for i, t in zip(ids, names) if t.startswith(prefix)}
    if mark is None:
        return set()
    special = set(tokenizer.all_special_ids)
    return {i for i, t in zip(ids, names) if i not in special and not t.startswith(mark)}


def _word_marks(tokenizer: Any) -> tuple[str | None, str | None]:
    """(prefix of a piece that continues a word, mark of a piece that starts one): from the fast
    tokenizer's model where it says (WordPiece), else from the vocabulary."""
    model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    if type(model).__name__ == "WordPiece":
        return model.continuing_subword_prefix, None
    vocab = tokenizer.get_vocab()
    if any(t.startswith("##") for t in vocab):
        return "##", None
    return None, next((m for m in ("\u0120", "\u2581") if any(t.startswith(m) for t in vocab)), None)
