"""ELECTRA: BERT's encoder behind factorised embeddings (`embeddings_project` maps the embedding
size to the hidden size when they differ), RoBERTa's two-layer classification head, and the
generator's masked-LM head (`generator_predictions`: dense, gelu, LayerNorm; `generator_lm_head`,
tied to the word embeddings)."""

from __future__ import annotations

from torch import nn

from .base import ClassifierHead, MlmHead, linear_head
from .bert import BertLayout
from .registry import register


@register("electra")
class ElectraLayout(BertLayout):
    family = "ELECTRA"

    @property
    def embedding_projection(self) -> nn.Linear | None:
        return getattr(self.base, "embeddings_project", None)

    def classifier(self) -> ClassifierHead:
        head = self.model.classifier
        return linear_head(self, head.out_proj, head)

    def mlm_head(self) -> MlmHead:
        pred, out = self.model.generator_predictions, self.model.generator_lm_head
        return MlmHead(pred, pred.dense, pred.activation, pred.LayerNorm, out, self.name(pred.dense.weight),
                       self.name(out.bias), self.names(pred, out), self.tied)
