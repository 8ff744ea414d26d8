"""Text attacks on a tiny local BERT: every registered text attack runs; exact recovery, label
recovery, length inference and fallbacks are asserted. Offline, small, a few seconds each."""

from __future__ import annotations

from collections import Counter

import dataclasses

import pytest
import torch

import textleak
from textleak.attacks import ATTACKS
from textleak.errors import MissingKnowledgeError
from textleak.gradients import GradientFile
from textleak.text import leaks
from textleak.text.layouts import layout_for
from textleak.text.inference import complete_knowledge
from textleak.text.models import load_text_model
from textleak.threat import Knowledge, Observation

WORDS = ("the a cat dog sat ran on under mat log big small red quickly slowly and . , "
         "bird sang song happy sad film movie good bad very was is").split()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    root = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=3, num_attention_heads=2,
                     intermediate_size=96, max_position_embeddings=24)
    BertForMaskedLM(cfg).save_pretrained(root)
    tok.save_pretrained(root)
    return str(root)


@pytest.fixture(scope="module")
def targets(model_dir):
    torch.set_num_threads(1)
    return {task: load_text_model(model_dir, task=task) for task in ("classify", "mlm")}


def _options(attack: str) -> dict:
    fields = {f.name for f in dataclasses.fields(ATTACKS.get(attack))}
    opts = {k: v for k, v in {"steps": 2, "prior": "none", "proposals": 2, "discrete_every": 1,
                              "any_mode": True}.items() if k in fields}
    return opts


# beyond_rank applies past the rank limit only (a single sentence is within it): tests/test_beyond_rank.py;
# likelihood_batch to batches of two or more: tests/test_likelihood_batch.py
TEXT_ATTACKS = [a for a in ATTACKS.names() if "text" in ATTACKS.get(a).modalities
                and a not in ("beyond_rank", "likelihood_batch")]


@pytest.mark.parametrize("attack", TEXT_ATTACKS)
@pytest.mark.parametrize("task", ["classify", "mlm"])
def test_every_text_attack_runs_and_says_what_it_assumed(targets, attack, task):
    target = targets[task]
    if attack in ("likelihood", "exact-adamw", "bags") and task == "mlm":
        pytest.skip(f"{attack} reads classification gradients only (bags' refusal: tests/test_bags.py)")
    # the variants for what a client shares run on what they read: an update, a noisy gradient
    defence = {"exact-update": "fedavg:1,0.1", "exact-adamw": "fedadamw:1,1e-3", "exact-noisy": "noise:1e-14",
               "likelihood": "noise:1e-8"}.get(attack)
    cap = textleak.capture_gradients(target, ["the cat sat on the mat ."], labels=[1], seed=1, defence=defence)
    if attack == "positions" and target.model.config.tie_word_embeddings and task == "mlm":
        with pytest.raises(MissingKnowledgeError, match="untied head"):  # tied: the word rows place nothing
            textleak.recover(gradients=cap.gradients, model=target, attack=attack, options=_options(attack),
                             progress=False)
        return
    res = textleak.recover(gradients=cap.gradients, model=target, attack=attack, reference=cap.reference,
                           unknown=["labels"], options=_options(attack), progress=False)
    assert res.method and len(res.texts) == 1
    assert "labels" in res.assumed and res.assumed["labels"] != "known"
    assert 0.0 <= res.metrics["mean"]["rouge1"] <= 1.0
    if attack in ("exact", "auto"):
        assert res.metrics["mean"]["exact_match"] == 1.0
        assert res.prediction["labels"] == cap.reference.labels


@pytest.mark.parametrize("task", ["classify", "mlm"])
def test_exact_recovers_a_batch_of_two_with_labels(targets, task):
    # no token repeats across positions: repeated tokens make layer-0 candidates ambiguous and
    # leave assembly to the layer-1 search, which is not guaranteed (see attacks/exact/)
    texts = ["the big dog ran", "a small red bird sang ."]
    cap = textleak.capture_gradients(targets[task], texts, labels=[0, 1], seed=3)
    res = textleak.recover(gradients=cap.gradients, model=targets[task], attack="exact",
                           reference=cap.reference, unknown=["labels"], progress=False)
    assert res.details["certified"]
    assert res.metrics["mean"]["exact_match"] == 1.0
    assert res.metrics["mean"]["label_accuracy"] == 1.0


def _wide_model(root, task: str, extra_words: tuple[str, ...] = ()):
    """A random 2-layer BERT 128 wide, saved and loaded the real way. Hidden 128: a 64-wide
    random model maps too many wrong sentences into the layer-1 span of a 27-token batch for its
    certificate to single out the true ones."""
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + list(extra_words)
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True).save_pretrained(root)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=256, max_position_embeddings=24)
    (BertForMaskedLM if task == "mlm" else BertForSequenceClassification)(cfg).save_pretrained(root)
    return load_text_model(str(root), task=task)


@pytest.fixture(scope="module")
def wide_target(tmp_path_factory):
    return _wide_model(tmp_path_factory.mktemp("wide-bert"), "classify")


def test_exact_recovers_a_batch_of_four_sharing_words(wide_target):
    # shared words in other places (crowding at MiniLM's batch 8, where the peeling rounds
    # matter, is measured by recipes/benchmark_text.py, too slow for a unit test). On this random
    # model a (token, position) pair repeated across sentences leaves its layer-1 inputs nearly
    # collinear, the span's rank falls short of the token count and wrong sentences pass the
    # certificate; MiniLM's span has one direction per token, so the batch avoids repeats.
    texts = ["the dog sat on the mat .", "a small dog sat", "a bird sang the song", "big cat ran"]
    cap = textleak.capture_gradients(wide_target, texts, labels=[0, 1, 1, 0], seed=1)
    res = textleak.recover(gradients=cap.gradients, model=wide_target, attack="exact",
                           reference=cap.reference, unknown=["labels"], progress=False)
    assert res.details["certified"]
    assert res.metrics["mean"]["exact_match"] == 1.0


def test_found_sentences_bar_their_copies_from_the_beam():
    from textleak.attacks.exact.sequences import follows as _follows, resembles as _resembles

    found = [101, 5, 6, 7, 8, 9, 10]
    assert _follows([101, 5, 6, 7], found) and _follows([101, 5, 99, 7, 8], found)  # one token off
    assert _follows([101, 5, 6, 7, 8, 9, 10, 11], found)  # grown past its end
    assert not _follows([101, 5, 6], found)  # too short to tell a shared opening from a copy
    assert not _follows([101, 5, 99, 98, 8], found)
    assert _resembles([101, 5, 42, 6, 7, 8, 9], found)  # shifted by an inserted token
    assert not _resembles([101, 5, 42, 43, 44, 8], found)


def test_exact_infers_lengths_when_withheld(targets):
    texts = ["the big dog ran under a log", "happy bird sang ."]
    cap = textleak.capture_gradients(targets["classify"], texts, labels=[1, 1])
    res = textleak.recover(gradients=cap.gradients, model=targets["classify"], attack="exact",
                           reference=cap.reference, unknown=["seq_lengths", "labels"], progress=False)
    assert "inferred" in res.assumed["seq_lengths"]
    assert res.metrics["mean"]["exact_match"] == 1.0


def test_analytic_label_recovery(targets):
    cap = textleak.capture_gradients(targets["classify"], ["a good movie"], labels=[1])
    g = cap.gradients.gradients
    layout = layout_for(targets["classify"].model)
    assert leaks.class_label_counts(layout, g, 1) == [0, 1]
    cap4 = textleak.capture_gradients(targets["classify"], ["a", "the film", "good", "bad"], labels=[0, 1, 1, 1])
    assert leaks.class_label_counts(layout, cap4.gradients.gradients, 4) == [1, 3]
    mlm = textleak.capture_gradients(targets["mlm"], ["the cat sat on the mat ."], mask_prob=0.4, seed=5)
    counts = leaks.mlm_label_counts(layout_for(targets["mlm"].model), mlm.gradients.gradients, len(mlm.reference.labels[0]))
    assert sorted(counts) == sorted(set(mlm.reference.labels[0]))
    know = Knowledge.from_dict(cap.gradients.metadata["knowledge"]).without("labels")
    obs, how = complete_knowledge(Observation(g, cap.gradients.metadata, know), targets["classify"])
    assert obs.knowledge.labels == (1,) and "recovered" in how["labels"]


def test_token_set_leaks_from_sparse_embedding_gradient(targets):
    target = targets["classify"]
    cap = textleak.capture_gradients(target, ["the dog ran"], labels=[0])
    leaked = set(leaks.embedding_token_set(layout_for(target.model), cap.gradients.gradients).tolist())
    assert leaked == set(cap.reference.token_ids[0])


def test_token_set_leaks_through_noise_from_outlier_rows(targets):
    layout = layout_for(targets["classify"].model)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(30000, 64, generator=gen) * 1e-3
    signal_rows = torch.tensor([7, 123, 4567, 29999])
    noisy = noise.clone()
    noisy[signal_rows] += torch.randn(4, 64, generator=gen) * 1e-2
    name = layout.word_embedding_name
    assert sorted(leaks.noisy_token_set(layout, {name: noisy}).tolist()) == signal_rows.tolist()
    assert leaks.noisy_token_set(layout, {name: noise}) is None  # nothing stands out: no false tokens
    dense = noise.clone()
    dense[:3000] *= 50  # many strong rows (a tied output layer): not a token set
    assert leaks.noisy_token_set(layout, {name: dense}) is None


def test_lamp_starts_from_the_leaked_bag_of_tokens(targets):
    from textleak.attacks.lamp import LampProblem
    from textleak.text.prior import load_prior

    target = targets["classify"]
    cap = textleak.capture_gradients(target, ["the big dog ran quickly"], labels=[0])
    obs = Observation(cap.gradients.gradients, cap.gradients.metadata,
                      Knowledge.from_dict(cap.gradients.metadata["knowledge"]))
    leaked = leaks.embedding_token_set(layout_for(target.model), obs.gradients)
    words = leaked[~torch.isin(leaked, torch.tensor([2, 3]))]  # [CLS]/[SEP] are fixed by the template
    problem = LampProblem(target, obs, observed=obs.gradients, distance="cosine", norm_weight=1.0,
                          prior=load_prior("none", target.tokenizer), prior_weight=0.0, discrete_every=0,
                          proposals=0, seed=0, candidates=words)
    start = problem._bag_start(torch.Generator().manual_seed(0))
    assert sorted(start[0, 1:-1].tolist()) == sorted(words.tolist())
    assert LampProblem(target, obs, observed=obs.gradients, distance="cosine", norm_weight=1.0,
                       prior=load_prior("none", target.tokenizer), prior_weight=0.0, discrete_every=0,
                       proposals=0, seed=0, candidates=words, bag_start=False)._bag_start(torch.Generator()) is None


def test_missing_layers_raise_and_auto_falls_back(targets):
    target = targets["classify"]
    cap = textleak.capture_gradients(target, ["the dog ran"], labels=[0])
    head_only = {n: g for n, g in cap.gradients.gradients.items() if n.startswith(("classifier", "bert.pooler"))}
    gf = GradientFile(head_only, cap.gradients.metadata)
    with pytest.raises(MissingKnowledgeError, match="query"):
        textleak.recover(gradients=gf, model=target, attack="exact", progress=False)
    res = textleak.recover(gradients=gf, model=target, attack="auto", options={"steps": 2}, progress=False)
    assert res.method in ("lamp", "tag", "dlg")
    assert res.details["tried"][0]["attack"] == "exact"


def test_bigram_prior_prefers_seen_order(tmp_path, monkeypatch, targets):
    from textleak.text.prior import load_prior

    data = tmp_path / "train_toy.tsv"
    data.write_text("sentence\tlabel\n" + "the cat sat on the mat\t1\n" * 5)
    monkeypatch.setenv("TEXTLEAK_PRIOR_DATA", str(data))
    monkeypatch.setenv("TEXTLEAK_CACHE", str(tmp_path / "cache"))
    tok = targets["mlm"].tokenizer
    prior = load_prior("bigram", tok)
    good = tok("the cat sat on the mat")["input_ids"]
    bad = tok("mat the on sat cat the")["input_ids"]
    assert prior.nll(good) < prior.nll(bad)
    assert load_prior("bigram", tok).nll(good) == pytest.approx(prior.nll(good))  # from the cache


def test_layer_span_keeps_a_weakly_weighted_input():
    # an input whose backpropagated signal is tiny (far from the loss) still lies above the noise
    # plateau; the span's rank must count it, or that sentence can never pass the certificate
    gen = torch.Generator().manual_seed(0)
    H, r = 48, 6
    inputs = torch.randn(r, H, generator=gen, dtype=torch.float64)
    deltas = torch.randn(3 * H, r, generator=gen, dtype=torch.float64)
    deltas[:, -1] *= 3e-6
    G = (deltas @ inputs).float()
    span = leaks.rank_gap([G[i * H:(i + 1) * H] for i in range(3)], 0)  # query, key, value
    assert span.rank == r
    # float32 noise over a weak direction: the member's residual stays within the span's floor
    assert float(span.residual(inputs[-1:])) < span.floor < 0.01


def test_found_sentence_is_subtracted_from_the_gradient(wide_target):
    from textleak.attacks.exact.peeling import Peeler as _Peeler

    texts = ["the dog sat on the mat .", "a small bird sang"]
    cap = textleak.capture_gradients(wide_target, texts, labels=[1, 0])
    obs = Observation(cap.gradients.gradients, cap.gradients.metadata,
                      Knowledge.from_dict(cap.gradients.metadata["knowledge"]))
    first, second = cap.reference.token_ids
    layout = layout_for(wide_target.model)
    before = leaks.layer_span(layout, obs.gradients, 1).rank
    lengths = [len(first), len(second)]
    peeler = _Peeler(obs, layout, lengths, before)
    rest = peeler.peel(first)
    span1, allowed = rest.span1, rest.allowed
    assert span1.rank == before - len(first)  # the label was found: the subtraction is exact
    assert peeler.labels == [1]
    assert allowed == set(second)  # tokens only the first sentence held are gone
    assert all(float(r) < span1.floor for r in leaks.sequence_residuals(layout, span1, [second]))
    wrong = list(first)
    wrong[2] = second[2]
    assert peeler.peel(wrong, last=True) is None  # a wrong sentence is refused, even as the last one
    assert peeler.peel(second, last=True) is not None and peeler.labels == [1, 0]
    assert _Peeler(obs, layout, lengths, before).peel(wrong) is None


@pytest.fixture(scope="module")
def wide_mlm_target(tmp_path_factory):
    return _wide_model(tmp_path_factory.mktemp("wide-mlm"), "mlm")


def test_masked_lm_sentences_are_peeled_with_their_masked_tokens(wide_mlm_target):
    """The masked-LM loss averages over every masked position of the batch: a found sentence's
    share needs its slot's masked positions and their tokens, which the peel reads off the
    prediction-head transform gradient; a wrong sentence is refused."""
    from textleak.attacks.exact.peeling import Peeler as _Peeler

    texts = ["the dog sat on the mat .", "a small bird sang", "big red cat ran"]
    cap = textleak.capture_gradients(wide_mlm_target, texts, seed=2, mask_prob=0.3)
    obs = Observation(cap.gradients.gradients, cap.gradients.metadata,
                      Knowledge.from_dict(cap.gradients.metadata["knowledge"]))
    res = textleak.recover(gradients=cap.gradients, model=wide_mlm_target, attack="exact",
                           reference=cap.reference, unknown=["labels"], progress=False)
    assert res.details["certified"] and res.details["peeled"] == 3
    assert res.metrics["mean"]["exact_match"] == 1.0 and res.prediction["labels"] == cap.reference.labels
    # by hand: the sentences as the model saw them ([MASK] and replaced tokens in place)
    from textleak.text.batch import build_batch

    tb = build_batch(wide_mlm_target.tokenizer, texts, task="mlm", labels=None, num_labels=None, mask_prob=0.3,
                     max_positions=wide_mlm_target.max_positions, generator=torch.Generator().manual_seed(2))
    seen = [tb.input_ids[b, :n].tolist() for b, n in enumerate(tb.lengths)]
    layout = layout_for(wide_mlm_target.model)
    before = leaks.layer_span(layout, obs.gradients, 1).rank
    peeler = _Peeler(obs, layout, tb.lengths, before, wide_mlm_target.tokenizer.mask_token_id)
    wrong = list(seen[0])
    wrong[2] = seen[1][2]
    assert peeler.peel(wrong) is None
    rest = peeler.peel(seen[0])
    assert rest.span1.rank == before - len(seen[0])
    assert peeler.slots == [0] and peeler.labels == [cap.reference.labels[0]]
    assert peeler.peel(seen[2]) is not None and peeler.peel(seen[1], last=True) is not None
    assert peeler.slots == [0, 2, 1] and peeler.labels == [cap.reference.labels[i] for i in (0, 2, 1)]


def test_slot_residuals_match_whole_sentence_residuals(wide_target):
    """The one-token-per-candidate shortcut gives the same numbers as running layer 0 on the
    whole (partial) sentence."""
    texts = ["the dog sat on the mat .", "a small bird sang"]
    cap = textleak.capture_gradients(wide_target, texts, labels=[1, 0])
    model, seq = layout_for(wide_target.model), cap.reference.token_ids[0]
    span1 = leaks.layer_span(model, cap.gradients.gradients, 1)
    p, options = 3, torch.tensor([seq[3], seq[5], 30])
    in_context = leaks.slot_residuals(model, span1, torch.tensor([seq[:p]]), options, seq[p + 1:])[0]
    whole = []
    for t in options.tolist():
        trial = list(seq)
        trial[p] = t
        whole.append(float(leaks.position_residuals(model, span1, trial)[p]))
    assert torch.allclose(in_context, torch.tensor(whole, dtype=in_context.dtype), rtol=1e-3, atol=1e-9)
    prefixes = torch.tensor([seq[:p], seq[1:p + 1]])
    alone = leaks.slot_residuals(model, span1, prefixes, options)
    trials = torch.cat([torch.cat([prefixes.repeat_interleave(3, 0), options.repeat(2)[:, None]], 1)])
    ref = leaks.partial_residuals(model, span1, trials, torch.arange(p + 1).expand_as(trials))[:, -1].reshape(2, 3)
    assert torch.allclose(alone, ref, rtol=1e-3, atol=1e-9)
    with leaks.layer0_table(model, 2):  # looked up, not recomputed: the same numbers, up to rounding
        assert torch.allclose(leaks.slot_residuals(model, span1, prefixes, options), alone, rtol=1e-5)
        assert torch.allclose(leaks.slot_residuals(model, span1, torch.tensor([seq[:p]]), options, seq[p + 1:])[0],
                              in_context, rtol=1e-5)


def test_shifted_variants_keep_length_and_ends():
    from textleak.attacks.exact.sequences import shifted as _shifted

    seq = [101, 5, 6, 7, 8, 9, 102]
    variants = _shifted(seq, ends=True)
    assert all(len(v) == len(seq) and v[0] == 101 and v[-1] == 102 for v in variants)
    assert [101, 6, 7, 8, 9, 9, 102] in variants  # first token deleted, the rest moved up
    assert [101, 5, 5, 6, 7, 8, 102] in variants  # a token doubled, the tail trimmed
    assert seq not in variants


def test_declared_mask_positions_pick_the_slot_of_each_sentence():
    """Sentences of one length are assembled in any order; the masked-LM labels must be filled
    into the slot whose declared mask positions the sentence's [MASK] tokens occupy."""
    from textleak.attacks.exact.sequences import slots_by_masks as _slots_by_masks

    M = 103
    sequences = [[101, 5, M, 7, 102], [101, M, 8, 9, 102], [101, 4, 102]]
    assert _slots_by_masks(sequences, [{1}, {2}, set()], M) == [1, 0, 2]
    assert _slots_by_masks(sequences, [{2}, {1}, set()], M) == [0, 1, 2]
    # a slot fixed by a peel (which matched the slot's masked tokens) is kept
    assert _slots_by_masks(sequences, [{2}, {2}, set()], M, {1: 0}) == [1, 0, 2]


def test_word_move_places_a_word_split_in_pieces(tmp_path):
    """No piece of a word split in three ranks well while the other two are wrong (measured on
    MiniLM and RT; this small random model is less strict); `_anchor` tries each continuation
    piece as a word's last piece and re-chooses the pieces before it, which restores the word."""
    from textleak.attacks.exact import Candidates, Exact, Search, WordMove
    from textleak.attacks.exact.moves import word_trials

    target = _wide_model(tmp_path, "classify", ("mani", "##pu", "##lative", "ho", "##key"))
    tok = target.tokenizer
    # (this random model leaves some tokens of longer sentences under the span's noise floor)
    texts = ["a film was manipulative", "hokey song"]
    cap = textleak.capture_gradients(target, texts, labels=[0, 1], seed=0)
    truth = cap.reference.token_ids[0]
    assert tok.convert_ids_to_tokens(truth[4:7]) == ["mani", "##pu", "##lative"]
    layout = layout_for(target.model)
    span1 = leaks.layer_span(layout, cap.gradients.gradients, 1)
    options = sorted({t for s in cap.reference.token_ids for t in s} - {2, 3})
    miss = list(truth)
    miss[4:7] = truth[1:4]  # the word overwritten by a copy of the words before it
    pieces = {t for t in options if tok.convert_ids_to_tokens(t).startswith("##")}
    trials = word_trials(layout, span1, lambda p, n=None: options, miss, True, pieces, worst=6)
    assert truth in trials  # the word's last piece placed, the two before it re-chosen in context
    cands = Candidates([[(t, 0.0) for t in options]] * len(truth), {2, 3})
    search = Search(Exact(), layout, tok, cands, [len(truth)], span1)
    assert search.pieces == pieces
    found, residual = WordMove()(search, miss)
    assert found == truth and span1.certifies(residual, len(truth))


def test_embedding_gradients_place_tokens_at_their_positions(wide_target, targets):
    """Each occurrence's share of the word- and position-embedding rows is orthogonal to its own
    LayerNorm input: a token standing at one position is placed there and nowhere else, and every
    true (token, position) pair stays allowed."""
    texts = ["the dog sat on the mat .", "a small dog sat", "a bird sang the song", "big cat ran"]
    cap = textleak.capture_gradients(wide_target, texts, labels=[0, 1, 1, 0], seed=1)
    ids, grads = cap.reference.token_ids, cap.gradients.gradients
    L = max(map(len, ids))
    layout = layout_for(wide_target.model)
    found = leaks.token_positions(layout, grads, leaks.embedding_token_set(layout, grads).tolist(), L)
    where: dict[int, set[int]] = {}
    for s in ids:
        for i, t in enumerate(s):
            where.setdefault(t, set()).add(i)
    assert all(s[i] in found.allowed[i] for s in ids for i in range(len(s)))
    assert all(at <= where[t] for t, at in found.placed.items())  # nothing placed where it is not
    # a token standing once is placed (its share is orthogonal to 1e-8); one standing at one position
    # in several sentences ([CLS] here) sums several shares, whose float32 rounding can pass the
    # threshold (3.1e-7 against eps 1.2e-7 on one machine), so it may stay unplaced, never misplaced
    count = Counter(t for s in ids for t in s)
    once = [t for t, at in where.items() if len(at) == 1 and count[t] == 1]
    assert once and all(found.placed.get(t) == where[t] for t in once)
    assert all(t not in found.allowed[i] for t in once for i in range(L) if i not in where[t])
    vocab = {"dog": wide_target.tokenizer.convert_tokens_to_ids("dog")}
    assert found.placed.get(vocab["dog"]) in (None, where[vocab["dog"]])  # at 2 positions: placed only if separated
    # noise hides the orthogonality: nothing is placed, nothing is barred
    noisy = {n: g + 1e-3 * torch.randn_like(g) * g.abs().max() if "embeddings" in n else g for n, g in grads.items()}
    rows = noisy[layout.word_embedding_name]
    rows[(grads[layout.word_embedding_name].abs().sum(1) == 0)] = 0  # still sparse, as an untied head leaves it
    blurred = leaks.token_positions(layout, noisy, leaks.embedding_token_set(layout, noisy).tolist(), L)
    assert not blurred.placed and all(s[i] in blurred.allowed[i] for s in ids for i in range(len(s)))
    # a tied masked-LM head writes to every row: nothing to read
    mlm = textleak.capture_gradients(targets["mlm"], texts[:2], seed=1)
    assert leaks.token_positions(layout_for(targets["mlm"].model), mlm.gradients.gradients, [5, 6], L) is None


def test_exact_drops_a_wrong_placement_and_still_recovers(targets, monkeypatch):
    """A chance orthogonality could place a token where it does not stand, barring its sentence:
    once the search within the placements fails, it goes on over every layer-0 candidate."""
    texts = ["the big dog ran", "a small red bird sang ."]
    cap = textleak.capture_gradients(targets["classify"], texts, labels=[0, 1], seed=3)
    from textleak.text.leaks import positions

    real = positions.token_positions

    def misplaced(*args, **kwargs):
        out = real(*args, **kwargs)
        if out is not None:
            t = cap.reference.token_ids[0][2]
            for i, allowed in enumerate(out.allowed):
                allowed.discard(t)
            out.allowed[3].add(t)
        return out

    monkeypatch.setattr(positions, "token_positions", misplaced)
    res = textleak.recover(gradients=cap.gradients, model=targets["classify"], attack="exact",
                           reference=cap.reference, unknown=["labels"], progress=False,
                           options={"widen": 1})
    assert res.details["certified"] and res.metrics["mean"]["exact_match"] == 1.0


def test_a_miss_past_a_shorter_sentence_is_cut_to_it():
    from textleak.attacks.exact.sequences import cuts as _cuts

    miss = [101, 5, 6, 7, 42, 43, 102]  # a 5-token sentence [101, 5, 6, 7, 102] and two stray tokens
    assert _cuts(miss, [5, 7, 9], ends=True, sep_id=102) == [[101, 5, 6, 7, 102]]
    assert _cuts(miss, [3, 5], ends=False, sep_id=None) == [miss[:3], miss[:5]]


def test_polish_and_shift_stop_scoring_at_the_time_budget():
    """A move scores many variants of a long sentence between the search's budget checks: past the
    budget it returns what it has (SST-2 dev batch 4 at noise 1e-10: one polish ran 80 s)."""
    import time
    from types import SimpleNamespace

    from textleak.attacks.exact.moves import PolishMove, ShiftMove
    from textleak.core.budget import time_budget

    truth = [101, 5, 6, 7, 8, 102]
    calls = []

    def residuals(rows):
        calls.append(len(rows))
        return torch.tensor([float(sum(a != b for a, b in zip(r, truth))) for r in rows], dtype=torch.double)

    search = SimpleNamespace(residuals=residuals, ends=True, config=SimpleNamespace(sweeps=3),
                             free=lambda p, n=None: [5, 6, 7, 8], settle=lambda seqs, known=(): seqs,
                             span1=SimpleNamespace(certifies=lambda r, n: r == 0))
    start = [101, 8, 8, 8, 8, 102]
    assert PolishMove(pairs=False)(search, start) == (truth, 0.0)  # within the budget: polished
    for move in (PolishMove(), ShiftMove()):
        calls.clear()
        with time_budget(1e-3):
            time.sleep(0.01)
            seq, _ = move(search, start)
        assert seq == start and len(calls) <= 2  # the miss's own score, at most one batch of variants
