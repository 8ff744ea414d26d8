"""DistilBERT: no token types; post-LayerNorm layers under `transformer.layer` with their own
names (attention.q_lin/k_lin/v_lin/out_lin, sa_layer_norm, ffn, output_layer_norm); a
`pre_classifier` + `classifier` head; the masked-LM head vocab_transform, activation,
vocab_layer_norm, vocab_projector (tied; its bias is the output bias)."""

from __future__ import annotations

from torch import nn

from .base import Block, ClassifierHead, Layout, MlmHead, linear_head
from .registry import register


@register("distilbert")
class DistilBertLayout(Layout):
    family = "DistilBERT"

    @property
    def hidden_size(self) -> int:
        return int(self.config.dim)

    @property
    def layers(self) -> nn.ModuleList:
        return self.base.transformer.layer

    def layer_block(self, layer: nn.Module) -> Block:
        attn = layer.attention
        return Block(attn.q_lin, attn.k_lin, attn.v_lin, int(self.config.n_heads),
                     lambda ctx, x: layer.sa_layer_norm(attn.out_lin(ctx) + x),
                     lambda a: layer.output_layer_norm(layer.ffn(a) + a))

    def classifier(self) -> ClassifierHead:
        return linear_head(self, self.model.classifier, self.model.pre_classifier, self.model.classifier)

    def mlm_head(self) -> MlmHead:
        m = self.model
        return MlmHead(m.vocab_transform, m.vocab_transform, m.activation, m.vocab_layer_norm, m.vocab_projector,
                       self.name(m.vocab_transform.weight), self.name(m.vocab_projector.bias),
                       self.names(m.vocab_transform, m.vocab_layer_norm, m.vocab_projector), self.tied)
