"""BERT (and MiniLM, which is a BERT): post-LayerNorm layers under `encoder.layer`, a pooler and
a `classifier`, a masked-LM head `cls.predictions` (transform dense, LayerNorm, tied decoder)."""

from __future__ import annotations

import torch
from torch import nn

from .base import Block, ClassifierHead, Layout, MlmHead, linear_head
from .registry import register


@register("bert")
class BertLayout(Layout):
    family = "BERT"

    @property
    def layers(self) -> nn.ModuleList:
        return self.base.encoder.layer

    def layer_block(self, layer: nn.Module) -> Block:
        attn = layer.attention.self
        return Block(attn.query, attn.key, attn.value, int(self.config.num_attention_heads),
                     layer.attention.output, lambda a: layer.output(layer.intermediate(a), a))

    def first_states(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor | None:
        """The last layer's [CLS] states [B, H] alone: layers 0..L-2 in full, then the last layer's attention with a
        query for position 0 only (keys and values over every position), its output map, feed-forward and layer
        norms for that row alone (#16: the target descent reads only [CLS]; the last layer's other rows are ~14% of
        a forward's products, large_batch_s44/fin64_README.md). The same states as `hidden_states(ids, mask)[:, 0]`
        to float32 rounding (tests/test_first_states.py). None under left padding (position 0 is moved)."""
        if self.padding is not None:
            return None
        k = self.num_layers - 1
        x, block = self.layer_inputs(ids, mask, k), self.block(k)
        n, length, _ = x.shape
        d = block.query.out_features // block.heads

        def heads(y: torch.Tensor) -> torch.Tensor:  # [n, rows, heads * d] -> [n, heads, rows, d]
            return y.view(n, y.shape[1], block.heads, d).transpose(1, 2)
        keep = None if mask is None else mask[:, None, None, :].bool()  # keys: the real tokens
        first = x[:, :1].contiguous()  # a strided view costs a bfloat16 linear 100x (17.8 ms against 0.13, MiniLM)
        context = torch.nn.functional.scaled_dot_product_attention(
            heads(block.query(first)), heads(block.key(x)), heads(block.value(x)), attn_mask=keep)
        a = block.attention_output(context.transpose(1, 2).reshape(n, 1, -1), first)
        return block.feed_forward(a)[:, 0]

    def linears(self, k: int) -> dict[str, nn.Linear]:
        layer = self.layer(k)
        return {"query": layer.attention.self.query, "context": layer.attention.output.dense,
                "ffn": layer.intermediate.dense, "ffn_hidden": layer.output.dense}

    def classifier(self) -> ClassifierHead:
        return linear_head(self, self.model.classifier, self.model.classifier)

    def pooler(self) -> tuple[nn.Linear, nn.LayerNorm] | None:
        dense = getattr(getattr(self.base, "pooler", None), "dense", None)
        norm = getattr(getattr(self.layer(self.num_layers - 1), "output", None), "LayerNorm", None)
        return None if dense is None or norm is None else (dense, norm)

    def mlm_head(self) -> MlmHead:
        head = self.model.cls
        transform = head.predictions.transform
        return MlmHead(head, transform.dense, transform.transform_act_fn, transform.LayerNorm,
                       self.model.get_output_embeddings(), self.name(transform.dense.weight),
                       self.name(head.predictions.bias), self.names(head), self.tied)
