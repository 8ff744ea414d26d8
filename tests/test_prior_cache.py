"""The fitted priors' disk cache (`text.prior.read_cached` / `write_cached`): a truncated or foreign
cache file is fitted again with a line on stderr, never a traceback; a cache that cannot be written
costs a refit, not the attack; files appear whole (written aside, then renamed)."""

from __future__ import annotations

import torch

from textleak.text import prior as tp


def _toy_bigram(tmp_path, monkeypatch, tiny_bert):
    from transformers import AutoTokenizer

    data = tmp_path / "train_toy.tsv"
    data.write_text("sentence\tlabel\n" + "the cat sat on the mat\t1\n" * 5)
    monkeypatch.setenv("TEXTLEAK_PRIOR_DATA", str(data))
    monkeypatch.setenv("TEXTLEAK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tp, "_BIGRAMS", {})
    return AutoTokenizer.from_pretrained(str(tiny_bert))


def test_a_truncated_bigram_cache_is_fitted_again_and_rewritten(tmp_path, monkeypatch, tiny_bert, capsys):
    tok = _toy_bigram(tmp_path, monkeypatch, tiny_bert)
    good = tok("the cat sat on the mat")["input_ids"]
    expected = tp.load_prior("bigram", tok).nll(good)
    (cache,) = (tmp_path / "cache").glob("bigram-*.pt")
    whole = cache.read_bytes()
    cache.write_bytes(whole[: len(whole) // 2])  # a process killed while writing (before renames)
    monkeypatch.setattr(tp, "_BIGRAMS", {})
    assert tp.load_prior("bigram", tok).nll(good) == expected
    assert "cannot be read" in capsys.readouterr().err
    assert tp.read_cached(cache, ("uni", "bi")) is not None  # the refit replaced the broken file
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temporary file left


def test_a_cache_file_without_the_fitted_tensors_is_refused(tmp_path, capsys):
    path = tmp_path / "context-head-x.pt"
    torch.save({"dense.weight": torch.zeros(2)}, path)
    assert tp.read_cached(path, ("dense.weight", "bias")) is None
    assert "lacks its fitted tensors" in capsys.readouterr().err
    assert tp.read_cached(tmp_path / "absent.pt", ("bias",)) is None
    assert capsys.readouterr().err == ""  # no cache yet is not worth a line


def test_an_unwritable_cache_costs_a_refit_not_the_attack(tmp_path, monkeypatch, tiny_bert, capsys):
    tok = _toy_bigram(tmp_path, monkeypatch, tiny_bert)
    (tmp_path / "blocked").write_text("a file where the cache folder should be")
    monkeypatch.setenv("TEXTLEAK_CACHE", str(tmp_path / "blocked" / "cache"))
    prior = tp.load_prior("bigram", tok)
    assert prior.total > 0
    assert "is not cached" in capsys.readouterr().err
