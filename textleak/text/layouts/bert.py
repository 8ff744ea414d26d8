"""BERT (and MiniLM, which is a BERT): post-LayerNorm layers under `encoder.layer`, a pooler and
a `classifier`, a masked-LM head `cls.predictions` (transform dense, LayerNorm, tied decoder)."""

from __future__ import annotations

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
