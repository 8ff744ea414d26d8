"""Reconstruction-quality metrics for leaked text.

Text metrics reproduce Google's ``rouge-score`` package (``RougeScorer`` with
its default tokenizer and ``use_stemmer=False``) exactly, so numbers reported
here are comparable with papers that used that package, without depending on
it (or on nltk/absl) at run time. ROUGE-L is the sentence-level LCS variant,
not ROUGE-Lsum.

rouge-score keeps only [a-z0-9], so Cyrillic, Greek, Arabic or CJK text would
score 0 however well it was recovered. Batch scoring (``score_text_batch``)
therefore picks the tokenisation per batch (``choose_tokenizer``): rouge-score's
when every letter is Latin script (so Latin text agrees with rouge-score bit for
bit), else a Unicode one (``unicode_tokens``: runs of letters, marks and digits
of any script, lowercased; each ideograph, kana or Thai/Lao/Khmer/Myanmar letter a
token of its own, as those scripts do not separate words by spaces). It records
which in the metrics, under ``rouge_tokenizer``. On ASCII text both agree.

Attacks usually recover a *batch* of sequences in an arbitrary order, so the
batch scorers first pair predictions with references by an optimal one-to-one
assignment (Hungarian algorithm) and only then average.

Image metrics (MSE, PSNR, SSIM, image matching) are in ``textleak.image.metrics``.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = [
    "Score",
    "rouge_tokens",
    "unicode_tokens",
    "choose_tokenizer",
    "rouge_n",
    "rouge_l",
    "rouge",
    "token_accuracy",
    "exact_match",
    "match_batch",
    "score_text_batch",
]

UNMATCHED = -1

# ---------------------------------------------------------------------------
# ROUGE
# ---------------------------------------------------------------------------

# rouge-score lowercases *before* filtering, so characters whose lowercase
# form is ASCII (e.g. "K" Kelvin sign -> "k") survive; only ASCII letters and
# digits ever make it into a token.
_NON_ALNUM = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class Score:
    """Precision, recall and F1 of one ROUGE variant."""

    precision: float
    recall: float
    fmeasure: float


def rouge_tokens(text: str) -> list[str]:
    """Tokenise ``text`` exactly as rouge-score's default tokenizer does."""
    # After the substitution only [a-z0-9] and spaces remain, so a plain
    # whitespace split already drops every empty/invalid token.
    return _NON_ALNUM.sub(" ", text.lower()).split()


# Scripts written without spaces between words: one token per character.
_UNSPACED = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}"
_UNICODE_TOKEN = None


def unicode_tokens(text: str) -> list[str]:
    """Lowercased runs of letters, marks and digits of any script; characters of scripts written
    without spaces (Han, kana, Thai...) one token each. Equal to ``rouge_tokens`` on ASCII text."""
    global _UNICODE_TOKEN
    if _UNICODE_TOKEN is None:
        import regex

        _UNICODE_TOKEN = regex.compile(rf"[{_UNSPACED}]|(?:(?![{_UNSPACED}])[\p{{L}}\p{{M}}\p{{N}}])+")
    return _UNICODE_TOKEN.findall(text.lower())


def choose_tokenizer(texts: Sequence[str]) -> str:
    """"rouge-score" when every letter and digit of `texts` is Latin or common script (rouge-score's
    own tokens then agree with published numbers), else "unicode"."""
    import regex

    foreign = regex.compile(r"(?=[\p{L}\p{N}])[^\p{Latin}\p{Common}\p{Inherited}]")
    return "unicode" if any(foreign.search(t) for t in texts) else "rouge-score"


TOKENIZERS = {"rouge-score": rouge_tokens, "unicode": unicode_tokens}


def _f1(precision: float, recall: float) -> float:
    # Same expression and operation order as rouge_score.scoring.fmeasure so
    # results agree bit for bit, not merely to rounding.
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _score_ngrams(pred_tokens: Sequence[str], ref_tokens: Sequence[str], n: int) -> Score:
    pred, ref = _ngrams(pred_tokens, n), _ngrams(ref_tokens, n)
    # Clipped counts: a repeated prediction n-gram only earns credit as often
    # as it occurs in the reference.
    overlap = sum(min(count, pred[gram]) for gram, count in ref.items())
    # max(.., 1) mirrors rouge-score: an empty side gives 0, not a ZeroDivision.
    precision = overlap / max(sum(pred.values()), 1)
    recall = overlap / max(sum(ref.values()), 1)
    return Score(precision, recall, _f1(precision, recall))


def rouge_n(prediction: str, reference: str, n: int) -> Score:
    """ROUGE-N of ``prediction`` against ``reference`` (clipped n-gram overlap)."""
    if n <= 0:
        raise ValueError(f"ROUGE-N needs a positive n, got {n}")
    return _score_ngrams(rouge_tokens(prediction), rouge_tokens(reference), n)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    # Two-row DP: only the length is needed, never the subsequence itself.
    if len(b) > len(a):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _score_lcs(pred_tokens: Sequence[str], ref_tokens: Sequence[str]) -> Score:
    if not pred_tokens or not ref_tokens:
        return Score(0.0, 0.0, 0.0)
    lcs = _lcs_length(pred_tokens, ref_tokens)
    precision = lcs / len(pred_tokens)
    recall = lcs / len(ref_tokens)
    return Score(precision, recall, _f1(precision, recall))


def rouge_l(prediction: str, reference: str) -> Score:
    """Sentence-level ROUGE-L (longest common subsequence), not ROUGE-Lsum."""
    return _score_lcs(rouge_tokens(prediction), rouge_tokens(reference))


def rouge(prediction: str, reference: str, *, tokenizer: str = "rouge-score") -> dict[str, float]:
    """F1 of ROUGE-1, ROUGE-2 and ROUGE-L, keyed "rouge1", "rouge2", "rougeL"."""
    # Tokenise once; the three variants share the token lists.
    tokens = TOKENIZERS[tokenizer]
    pred, ref = tokens(prediction), tokens(reference)
    return {
        "rouge1": _score_ngrams(pred, ref, 1).fmeasure,
        "rouge2": _score_ngrams(pred, ref, 2).fmeasure,
        "rougeL": _score_lcs(pred, ref).fmeasure,
    }


# ---------------------------------------------------------------------------
# Token-id metrics
# ---------------------------------------------------------------------------


def _as_ints(ids: Sequence[int]) -> list[int]:
    # Accept lists, numpy arrays and 1-D tensors alike; comparing Python ints
    # avoids element-wise array/tensor truthiness surprises.
    return [int(i) for i in ids]


def token_accuracy(predicted_ids: Sequence[int], reference_ids: Sequence[int]) -> float:
    """Fraction of reference positions whose id the prediction reproduces.

    Positions are compared one to one; reference positions the prediction
    does not reach count as wrong, and prediction tokens beyond the reference
    length are ignored (``exact_match`` is the length-sensitive check).
    """
    pred, ref = _as_ints(predicted_ids), _as_ints(reference_ids)
    if not ref:
        raise ValueError("token_accuracy is undefined for an empty reference")
    return sum(p == r for p, r in zip(pred, ref)) / len(ref)


def exact_match(predicted_ids: Sequence[int], reference_ids: Sequence[int]) -> bool:
    """True when the two id sequences are identical, lengths included."""
    return _as_ints(predicted_ids) == _as_ints(reference_ids)


# ---------------------------------------------------------------------------
# Batch matching
# ---------------------------------------------------------------------------


def assign_references(gain: np.ndarray, n_references: int) -> list[int]:
    """Map each reference (row of ``gain``) to a prediction, maximising total gain."""
    assignment = [UNMATCHED] * n_references
    if gain.size == 0:
        return assignment
    # Rectangular matrices are fine: with more references than predictions
    # the surplus references are simply left out of the returned rows.
    rows, cols = linear_sum_assignment(gain, maximize=True)
    for r, c in zip(rows, cols):
        assignment[int(r)] = int(c)
    return assignment


def match_batch(predictions: Sequence[str], references: Sequence[str], *,
                tokenizer: str = "rouge-score",
                predicted_ids: Optional[Sequence[Sequence[int]]] = None,
                reference_ids: Optional[Sequence[Sequence[int]]] = None) -> list[int]:
    """Optimal one-to-one pairing of predictions with references.

    Maximises the summed ROUGE-1 F1 + ROUGE-2 F1 over pairs. Returns, for
    each reference index, the index of its prediction, or -1 when there are
    fewer predictions than references and it was left unmatched.

    With ids, id-identical pairs are pinned first (once per copy on both
    sides), the rest matched on ROUGE: ROUGE forgives punctuation, and its
    ties went against an exact prediction (SST-2 batch 64, #16 s24).
    """
    tokens = TOKENIZERS[tokenizer]
    pred_tokens = [tokens(p) for p in predictions]
    ref_tokens = [tokens(r) for r in references]
    pinned = _identical_pairs(predicted_ids, reference_ids)
    refs = [i for i in range(len(ref_tokens)) if i not in pinned]
    preds = [j for j in range(len(pred_tokens)) if j not in set(pinned.values())]
    gain = np.zeros((len(refs), len(preds)))
    for a, i in enumerate(refs):
        for b, j in enumerate(preds):
            gain[a, b] = sum(_score_ngrams(pred_tokens[j], ref_tokens[i], n).fmeasure for n in (1, 2))
    assignment = [UNMATCHED] * len(ref_tokens)
    for i, j in pinned.items():
        assignment[i] = j
    for a, b in enumerate(assign_references(gain, len(refs))):
        assignment[refs[a]] = preds[b] if b != UNMATCHED else UNMATCHED
    return assignment


def _identical_pairs(predicted_ids: Optional[Sequence[Sequence[int]]],
                     reference_ids: Optional[Sequence[Sequence[int]]]) -> dict[int, int]:
    """reference index -> prediction index for id sequences that are identical, one to one."""
    if predicted_ids is None or reference_ids is None:
        return {}
    free: dict[tuple, list[int]] = {}
    for j, ids in enumerate(predicted_ids):
        free.setdefault(tuple(_as_ints(ids)), []).append(j)
    pinned = {}
    for i, ids in enumerate(reference_ids):
        left = free.get(tuple(_as_ints(ids)))
        if left:
            pinned[i] = left.pop(0)
    return pinned


def _check_ids(
    predicted_texts: Sequence[str],
    reference_texts: Sequence[str],
    predicted_ids: Optional[Sequence[Sequence[int]]],
    reference_ids: Optional[Sequence[Sequence[int]]],
) -> bool:
    if (predicted_ids is None) != (reference_ids is None):
        raise ValueError("give both predicted_ids and reference_ids, or neither")
    if predicted_ids is None:
        return False
    if len(predicted_ids) != len(predicted_texts):
        raise ValueError("predicted_ids and predicted_texts differ in length")
    if len(reference_ids) != len(reference_texts):
        raise ValueError("reference_ids and reference_texts differ in length")
    return True


def score_text_batch(
    predicted_texts: Sequence[str],
    reference_texts: Sequence[str],
    predicted_ids: Optional[Sequence[Sequence[int]]] = None,
    reference_ids: Optional[Sequence[Sequence[int]]] = None,
) -> dict:
    """Match a recovered batch to its references, then score every pair.

    Returns ``{"per_example": [...], "mean": {...}}``. Each per-example entry
    holds reference_index, prediction_index (-1 if unmatched), rouge1, rouge2,
    rougeL, exact_match and, when ids are given, token_accuracy. Means are
    over references, an unmatched reference scoring 0 everywhere; the mean
    "token_accuracy" is present only when ids are given. ``exact_match``
    compares ids when given, otherwise the ROUGE token lists of the texts
    (so case and punctuation differences are forgiven).
    """
    has_ids = _check_ids(predicted_texts, reference_texts, predicted_ids, reference_ids)
    if len(reference_texts) == 0:
        raise ValueError("cannot score an empty reference batch")
    tokenizer = choose_tokenizer([*predicted_texts, *reference_texts])
    tokens = TOKENIZERS[tokenizer]

    assignment = match_batch(predicted_texts, reference_texts, tokenizer=tokenizer,
                             predicted_ids=predicted_ids if has_ids else None,
                             reference_ids=reference_ids if has_ids else None)
    per_example = []
    for ref_idx, pred_idx in enumerate(assignment):
        entry: dict = {"reference_index": ref_idx, "prediction_index": pred_idx}
        if pred_idx == UNMATCHED:
            entry.update(rouge1=0.0, rouge2=0.0, rougeL=0.0)
            if has_ids:
                entry["token_accuracy"] = 0.0
            entry["exact_match"] = False
        else:
            pred_text, ref_text = predicted_texts[pred_idx], reference_texts[ref_idx]
            entry.update(rouge(pred_text, ref_text, tokenizer=tokenizer))
            if has_ids:
                entry["token_accuracy"] = token_accuracy(
                    predicted_ids[pred_idx], reference_ids[ref_idx]
                )
                entry["exact_match"] = exact_match(
                    predicted_ids[pred_idx], reference_ids[ref_idx]
                )
            else:
                entry["exact_match"] = tokens(pred_text) == tokens(ref_text)
        per_example.append(entry)

    keys = ["rouge1", "rouge2", "rougeL"] + (["token_accuracy"] if has_ids else []) + ["exact_match"]
    mean = {k: float(np.mean([float(e[k]) for e in per_example])) for k in keys}
    return {"per_example": per_example, "mean": mean, "rouge_tokenizer": tokenizer}
