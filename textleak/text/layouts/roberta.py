"""RoBERTa (and XLM-R): BERT's encoder, but positions start at padding_idx + 1 (a sentence's
first token reads row pad + 1 of the position table), a two-layer classification head
(`classifier.dense`, `classifier.out_proj`) and the masked-LM head `lm_head` (dense, gelu,
layer_norm, tied decoder, `lm_head.bias`)."""

from __future__ import annotations

from transformers.activations import gelu

from .base import ClassifierHead, MlmHead, linear_head
from .bert import BertLayout
from .registry import register


@register("roberta", "xlm-roberta")
class RobertaLayout(BertLayout):
    family = "RoBERTa"
    pads_take_positions = False

    @property
    def position_offset(self) -> int:
        return int(self.embeddings.padding_idx) + 1

    def classifier(self) -> ClassifierHead:
        head = self.model.classifier
        return linear_head(self, head.out_proj, head)

    def mlm_head(self) -> MlmHead:
        head = self.model.lm_head
        return MlmHead(head, head.dense, gelu, head.layer_norm, head.decoder, self.name(head.dense.weight),
                       self.name(head.bias), self.names(head), self.tied)
