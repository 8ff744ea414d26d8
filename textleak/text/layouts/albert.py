"""ALBERT: factorised embeddings (embedding size E, mapped to the hidden size by
`encoder.embedding_hidden_mapping_in`) and shared layers: `albert_layer_groups[g].albert_layers[j]`
is applied at every layer of group g (num_hidden_layers / num_hidden_groups times), so a Q/K/V
weight gradient sums over the inputs of all those layers. Its row space then holds every sharing
layer's inputs: the rank bound becomes layers x tokens, and layer 1's input is in the same span
as layer 0's (`qkv_sharing`). Heads: `classifier` on the pooler; the masked-LM head `predictions`
(dense, activation, LayerNorm, tied decoder, `predictions.bias`)."""

from __future__ import annotations

from torch import nn

from .base import Block, ClassifierHead, Layout, MlmHead, linear_head
from .registry import register


@register("albert")
class AlbertLayout(Layout):
    family = "ALBERT"

    def _group(self, i: int) -> int:
        """The layer group applied at step i (as AlbertTransformer.forward chooses it)."""
        return int(i / (int(self.config.num_hidden_layers) / int(self.config.num_hidden_groups)))

    @property
    def embedding_projection(self) -> nn.Linear:
        return self.base.encoder.embedding_hidden_mapping_in

    @property
    def num_layers(self) -> int:  # layer applications: every group runs all its inner layers
        return int(self.config.num_hidden_layers) * int(self.config.inner_group_num)

    def _where(self, k: int) -> tuple[int, int, int]:
        """(group, layer within the group, how many times that layer ran before layer k)."""
        i, j = divmod(k, int(self.config.inner_group_num))
        group = self._group(i)
        return group, j, sum(self._group(a) == group for a in range(i))

    def layer(self, k: int) -> nn.Module:
        group, j, _ = self._where(k)
        return self.base.encoder.albert_layer_groups[group].albert_layers[j]

    def layer_call(self, k: int) -> int:
        return self._where(k)[2]

    def qkv_sharing(self, k: int) -> int:
        group = self._where(k)[0]
        return sum(self._group(a) == group for a in range(int(self.config.num_hidden_layers)))

    def layer_block(self, layer: nn.Module) -> Block:
        attn = layer.attention
        return Block(attn.query, attn.key, attn.value, int(self.config.num_attention_heads),
                     lambda ctx, x: attn.LayerNorm(x + attn.dense(ctx)),
                     lambda a: layer.full_layer_layer_norm(layer.ffn_output(layer.activation(layer.ffn(a))) + a))

    def classifier(self) -> ClassifierHead:
        return linear_head(self, self.model.classifier, self.model.classifier)

    def mlm_head(self) -> MlmHead:
        pred = self.model.predictions
        return MlmHead(pred, pred.dense, pred.activation, pred.LayerNorm, pred.decoder, self.name(pred.dense.weight),
                       self.name(pred.bias), self.names(pred), self.tied)
