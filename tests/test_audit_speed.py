"""What keeps a noisy audit fast (issue 18) changes no answer: decoding against prepared rows, one
bigram prior per process, in-place noise, the cheaper finiteness test, the --threads option
(OMP_WAIT_POLICY set on import: test_determinism.py's fresh processes check it)."""

from __future__ import annotations

import pytest
import torch

from textleak.cli import main
from textleak.defences import parse_defence
from textleak.text.decode import NearestTokens, nearest_tokens
from textleak.utility import _finite


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_prepared_decoding_gives_the_same_ids(metric):
    g = torch.Generator().manual_seed(0)
    matrix, embeddings = torch.randn(300, 16, generator=g), torch.randn(7, 16, generator=g)
    candidates = torch.arange(5, 300, 2)
    decoder = NearestTokens(matrix, candidates, metric)
    assert torch.equal(decoder(embeddings), nearest_tokens(embeddings, matrix, candidates, metric))
    assert decoder(embeddings[:0]).numel() == 0


def test_the_bigram_prior_is_built_once_per_process(tmp_path, monkeypatch, tiny_bert):
    from transformers import AutoTokenizer

    from textleak.text.prior import load_prior

    (tmp_path / "train_toy.tsv").write_text("sentence\tlabel\nthe cat sat\t1\n")
    monkeypatch.setenv("TEXTLEAK_PRIOR_DATA", str(tmp_path / "train_toy.tsv"))
    monkeypatch.setenv("TEXTLEAK_CACHE", str(tmp_path / "cache"))
    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    assert load_prior("bigram", tok) is load_prior("bigram", tok)


def test_noise_in_place_and_the_finiteness_test():
    grads = {"w": torch.randn(40, 8), "b": torch.randn(8).half()}
    noisy = parse_defence("noise:0.01").apply(grads, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    for name, g in grads.items():  # the values of g + noise * std, drawn in the same order
        assert torch.equal(noisy[name], g + torch.randn(g.shape, generator=gen, dtype=g.dtype) * 0.1)
    for bad in (float("nan"), float("inf"), -float("inf")):
        t = torch.zeros(10)
        t[3] = bad
        assert not _finite(t)
    assert _finite(torch.ones(3)) and _finite(torch.zeros(0))


def test_threads_option_sets_and_restores_the_count(capsys):
    before = torch.get_num_threads()
    assert main(["--threads", "1", "env"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("torch_threads"))
    assert line.split()[-1] == "1" and torch.get_num_threads() == before
    assert main(["--threads", "0", "env"]) == 2
    assert capsys.readouterr().err.startswith("textleak: error: --threads must be at least 1")
