"""Model layouts: everything architecture-specific that the leaks and exact recovery need, one
small class per family, registered by `config.model_type` (as Opacus registers a grad sampler
per layer type).

    layout = layout_for(model)              # UnsupportedModelError for an unregistered model_type
    layout.qkv_names(1)                     # ['bert.encoder.layer.1.attention.self.query.weight', ...]
    layout.layer0_inputs(tokens, position)  # [N, H]: what layer 0 receives for (token, position)
    layout.layer_inputs(ids, mask, k)       # [B, L, H]: layer k's input, running only the layers below k

A layout answers: the word / position / token-type embeddings and their LayerNorm, the embedding
projection (ALBERT, ELECTRA), position ids (RoBERTa's offset), layer k's Q/K/V modules and names
and whether other layers share them (ALBERT), the layer pieces the one-token shortcut runs
(`Block`), the classification head (`ClassifierHead`) and the masked-LM head (`MlmHead`).
Parameter names are derived from the modules, never matched by pattern.

Supported: BERT (and MiniLM), RoBERTa (and XLM-R), DistilBERT, ALBERT, ELECTRA. A new family is
one module here: subclass `Layout` (or a close family's layout), name its modules, register it.
"""

from __future__ import annotations

from torch import nn

from ...errors import UnsupportedModelError
from .base import Block, ClassifierHead, Layout, MlmHead
from .registry import LAYOUTS, register
from . import albert, bert, distilbert, electra, roberta  # noqa: F401  (registration)
from .albert import AlbertLayout
from .bert import BertLayout
from .distilbert import DistilBertLayout
from .electra import ElectraLayout
from .roberta import RobertaLayout

__all__ = ["Block", "ClassifierHead", "Layout", "MlmHead", "LAYOUTS", "register", "layout_for", "supported",
           "AlbertLayout", "BertLayout", "DistilBertLayout", "ElectraLayout", "RobertaLayout"]


def supported() -> list[str]:
    """The model types that have a layout."""
    return LAYOUTS.names()


def layout_for(model: nn.Module) -> Layout:
    """The layout of `model` (by `model.config.model_type`), bound to it."""
    if isinstance(model, Layout):
        return model
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in LAYOUTS:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported by exact recovery and the analytic leaks; "
            f"supported: {', '.join(supported())} (BERT and MiniLM, RoBERTa and XLM-R, DistilBERT, ALBERT, ELECTRA)")
    return LAYOUTS.get(model_type)(model)
