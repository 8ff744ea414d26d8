"""The layout interface: what one architecture answers for the leaks and exact recovery.

A `Layout` is bound to one model instance. Subclasses (one per family, registered by
`config.model_type` in `textleak.text.layouts.LAYOUTS`) name the modules; everything else here is
derived from them, parameter names included: a name is what `model.named_parameters()` calls the
module's parameter, so it matches the gradient file's keys whatever prefix the model class adds.

Conventions. Positions are *logical* (0 for the first token, [CLS] or <s>); `position_ids` maps
them to rows of the position-embedding table (RoBERTa offsets them by padding_idx + 1). "Layer k"
counts layer applications from the embeddings up: ALBERT applies one set of weights at every
layer, so layer k's Q/K/V parameters can be shared with other layers (`qkv_sharing`), and their
gradient then sums over every sharing layer's inputs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch
from torch import nn

from ...errors import MissingKnowledgeError, UnsupportedModelError


@dataclass(frozen=True)
class Block:
    """One encoder layer as `leaks.slots.slot_residuals` runs it for a single token (post-LayerNorm,
    BERT-style): scaled dot-product attention with `heads` heads over query/key/value, then
    a = attention_output(context, x) and the layer's output feed_forward(a)."""

    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    heads: int
    attention_output: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    feed_forward: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ClassifierHead:
    """The classification head: `output` is its last linear layer, whose weight gradient is
    (P - Y)^T features / B; `names` are every parameter of the head (BERT: classifier.*;
    RoBERTa/ELECTRA: classifier.dense.*, classifier.out_proj.*; DistilBERT: pre_classifier.*
    and classifier.*)."""

    output: nn.Linear
    weight: str
    bias: str | None
    names: tuple[str, ...]


@dataclass(frozen=True)
class MlmHead:
    """The masked-LM head: logits = decoder(norm(activation(dense(h)))). `module` is the head's
    first module (it receives the encoder's hidden states), `dense_weight` the transform's weight
    name, `bias` the output bias (its gradient counts the masked tokens), `tied` whether the
    decoder reuses the word embeddings (then the word-embedding gradient is dense)."""

    module: nn.Module
    dense: nn.Linear
    activation: Callable[[torch.Tensor], torch.Tensor]
    norm: nn.Module
    decoder: nn.Module
    dense_weight: str
    bias: str
    names: tuple[str, ...]
    tied: bool

    def logits(self, pre: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits from the transform's pre-activation `pre` [..., E]."""
        return self.decoder(self.norm(self.activation(pre)))


class _Stop(Exception):
    pass


class Layout:
    """Where one architecture keeps its embeddings, layers and heads (see the module doc).

    Subclasses set `family` and implement `layers` (or `num_layers` and `layer`), `block`,
    `classifier` and `mlm_head` (and `embedding_projection`, `layer_call`, `qkv_sharing` where
    the architecture has them); the embeddings are found under the base model's `embeddings` by
    the names all five families use; the rest is shared."""

    family: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    #: rows of the position table before logical position 0 (RoBERTa: padding_idx + 1)
    position_offset: int = 0
    #: whether pads take position ids, so that left padding shifts a sentence (RoBERTa: no, its
    #: position ids count only the real tokens and every pad reads the padding row)
    pads_take_positions: ClassVar[bool] = True

    def __init__(self, model: nn.Module):
        self.model = model
        #: the victim's left padding (`text.padding.LeftPadding`), None for right padding or none
        self.padding = None
        #: shift of layer 0's per-(token, position) rows: L - n while sentences of length n are
        #: searched in a left-padded batch (`shifted`)
        self.offset = 0
        self.config = model.config
        self.base = model.base_model
        self._names = {id(p): n for n, p in model.named_parameters()}
        try:
            self._check()
        except (AttributeError, IndexError, TypeError) as exc:
            raise UnsupportedModelError(
                f"{type(model).__name__} (model type {self.config.model_type!r}) is not laid out as "
                f"{self.family} models are ({exc})") from None

    def _check(self) -> None:
        """Find the modules every leak needs (AttributeError where the model keeps them elsewhere)."""
        block = self.block(0)
        for module in (self.word_embeddings, self.position_embeddings, self.embedding_norm, block.query, block.key,
                       block.value):
            if not isinstance(module, nn.Module):
                raise AttributeError(f"{type(module).__name__} found where a module was expected")

    # -- modules (per family; the embeddings' names are the same in all five) ------------------------
    @property
    def embeddings(self) -> nn.Module:
        return self.base.embeddings

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    @property
    def position_embeddings(self) -> nn.Embedding:
        return self.embeddings.position_embeddings

    @property
    def token_type_embeddings(self) -> nn.Embedding | None:
        return getattr(self.embeddings, "token_type_embeddings", None)

    @property
    def embedding_norm(self) -> nn.LayerNorm:
        return self.embeddings.LayerNorm

    @property
    def embedding_projection(self) -> nn.Linear | None:
        """A linear map from the embedding size to the hidden size (ALBERT; ELECTRA when they differ)."""
        return None

    @property
    def layers(self) -> nn.ModuleList:
        """The encoder's layers, in order (where each layer has its own weights)."""
        raise NotImplementedError

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def layer(self, k: int) -> nn.Module:
        """The module whose forward receives layer k's input."""
        return self.layers[k]

    def layer_call(self, k: int) -> int:
        """Which call of `layer(k)` within one forward pass is layer k (0 unless layers are shared)."""
        return 0

    def qkv_sharing(self, k: int) -> int:
        """How many layers apply layer k's Q/K/V weights (ALBERT: all of a group's layers)."""
        return 1

    def block(self, k: int) -> Block:
        """Layer k as a `Block`."""
        return self.layer_block(self.layer(k))

    def layer_block(self, layer: nn.Module) -> Block:
        """A `Block` over `layer`, a module shaped as this family's `layer(k)` (e.g. a cast copy of one)."""
        raise NotImplementedError

    def classifier(self) -> ClassifierHead:
        raise NotImplementedError

    def linears(self, k: int) -> dict[str, nn.Linear]:
        """Layer k's linear maps by site, each applied to every position separately (#16: past
        the rank limit, `leaks.sentences` reads their inputs at [CLS] in the last layer): the
        query here; a family adds the ones it names (BERT: attention output, feed-forward)."""
        return {"query": self.block(k).query}

    def mlm_head(self) -> MlmHead:
        raise NotImplementedError

    def pooler(self) -> tuple[nn.Linear, nn.LayerNorm] | None:
        """A [CLS] pooler's dense map (tanh after it) and the last layer's output LayerNorm it reads
        (`leaks.pooled`), or None where the family has none."""
        return None

    # -- names -----------------------------------------------------------------------------------
    def name(self, parameter: torch.Tensor) -> str:
        """The parameter's name in `model.named_parameters()` (the gradient file's key)."""
        return self._names[id(parameter)]

    def names(self, *modules: nn.Module) -> tuple[str, ...]:
        """Every parameter name of `modules`, in order, once each; a tied decoder's weight (the
        word embeddings) is left out."""
        tied, out = id(self.word_embeddings.weight), []
        for p in (p for m in modules for p in m.parameters()):
            if id(p) != tied and self.name(p) not in out:
                out.append(self.name(p))
        return tuple(out)

    @property
    def word_embedding_name(self) -> str:
        return self.name(self.word_embeddings.weight)

    @property
    def position_embedding_name(self) -> str:
        return self.name(self.position_embeddings.weight)

    def qkv_names(self, k: int) -> list[str]:
        """Layer k's query, key and value weight names ([] past the last layer)."""
        if not 0 <= k < self.num_layers:
            return []
        b = self.block(k)
        return [self.name(m.weight) for m in (b.query, b.key, b.value)]

    def qkv_gradient(self, gradients: Mapping[str, Any], k: int, what: str) -> torch.Tensor:
        """Layer k's query, key and value weight gradients that the file shares, stacked in double
        [3H, H] (fewer rows where some are not shared) on the model's device; MissingKnowledgeError
        naming the parameters (and `what` needs them) when it shares none."""
        names = self.qkv_names(k)
        self.require(gradients, names, what)
        return torch.cat([gradients[n].to(self.device).double() for n in self.shared(gradients, names)], 0)

    @staticmethod
    def shared(gradients: Mapping[str, Any], names: Sequence[str]) -> list[str]:
        """Those of `names` the gradient file shares."""
        return [n for n in names if n in gradients]

    @staticmethod
    def require(gradients: Mapping[str, Any], names: Sequence[str], what: str) -> None:
        """MissingKnowledgeError, naming the parameters, when the file shares none of `names`."""
        if not any(n in gradients for n in names):
            raise MissingKnowledgeError(f"{what} needs the gradient of {', '.join(names)}, which the file does not share")

    # -- computation -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.word_embeddings.weight.device

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def tied(self) -> bool:
        """Whether the output layer reuses the word embeddings (a tied masked-LM head)."""
        out = self.model.get_output_embeddings()
        return out is not None and out.weight is self.word_embeddings.weight

    def position_ids(self, positions):
        """Rows of the position table for logical positions (an int or a tensor)."""
        return positions + self.position_offset

    def type_row(self) -> torch.Tensor | None:
        """The token-type embedding every captured sentence carries (type 0), or None."""
        t = self.token_type_embeddings
        return None if t is None else t.weight[0]

    @contextlib.contextmanager
    def shifted(self, offset: int):
        """Layer 0's per-(token, position) rows shifted by `offset` positions within the block."""
        saved, self.offset = self.offset, offset
        try:
            yield
        finally:
            self.offset = saved

    def types_used(self, gradients: Mapping[str, torch.Tensor]) -> list[int] | None:
        """Token types the batch used: the nonzero rows of the token-type embedding gradient (a
        sentence pair's second segment is type 1); None where the model or file has none."""
        t = self.token_type_embeddings
        if t is None or self.name(t.weight) not in gradients:
            return None
        return (gradients[self.name(t.weight)].double().norm(dim=1) > 0).nonzero().flatten().tolist()

    def inputs(self, ids: torch.Tensor, mask: torch.Tensor | None = None,
               positions: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Keyword arguments for the model: token ids [B, L], attention mask (all ones by default),
        logical positions ([L] or [B, L]; 0..L-1 by default), token type 0 where the model has types.
        Under left padding (`self.padding`) the rows are arranged as the victim's were: outputs
        per position then come back through `_restore`."""
        if self.padding is not None:
            ids, mask, positions, _ = self.padding.arrange(ids, mask, positions)
        if positions is None:
            positions = torch.arange(ids.shape[-1], device=ids.device)
        kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids) if mask is None else mask,
                  "position_ids": self.position_ids(positions if positions.dim() > 1 else positions[None])}
        if self.token_type_embeddings is not None:
            kwargs["token_type_ids"] = torch.zeros_like(ids)
        return kwargs

    def layer0_inputs(self, tokens: torch.Tensor, position: int | torch.Tensor) -> torch.Tensor:
        """What layer 0 receives for each token at a logical position: the projection (where the
        architecture has one) of LayerNorm(E[t] + P[position] + T[0]). One position for every
        token ([N] -> [N, H]), or one per token along the last axis ([..., m], positions [m] ->
        [..., m, H])."""
        x = self.word_embeddings.weight[tokens] + \
            self.position_embeddings.weight[self.position_ids(position + self.offset)]
        t = self.type_row()
        if t is not None:
            x = x + t
        x = self.embedding_norm(x)
        proj = self.embedding_projection
        return x if proj is None else proj(x)

    def layer_inputs(self, ids: torch.Tensor, mask: torch.Tensor | None, k: int,
                     positions: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states entering layer k [B, L, H], running only the layers below it."""
        seen = self.module_inputs(ids, mask, {"h": (self.layer(k), self.layer_call(k))}, positions)
        return self._restore(seen["h"], ids, mask, positions)

    def module_inputs(self, ids: torch.Tensor, mask: torch.Tensor | None,
                      modules: Mapping[Any, tuple[nn.Module, int]],
                      positions: torch.Tensor | None = None) -> dict[Any, torch.Tensor]:
        """What enters each module {key: its first input (or `hidden_states`)} on its `call`-th call
        (0-based: a shared layer runs once per depth), in one forward of the encoder stopped as soon
        as every key is seen."""
        seen: dict[Any, torch.Tensor] = {}

        def grab(key, want: int):
            calls = [0]

            def hook(module, args, kwargs):
                if calls[0] == want and key not in seen:
                    seen[key] = args[0] if args else kwargs["hidden_states"]
                    if len(seen) == len(modules):
                        raise _Stop
                calls[0] += 1
            return hook

        handles = [m.register_forward_pre_hook(grab(key, want), with_kwargs=True) for key, (m, want) in modules.items()]
        try:
            self.base(**self.inputs(ids, mask, positions))
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        return seen

    def hidden_states(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's last hidden states [B, L, H]."""
        return self._restore(self.base(**self.inputs(ids, mask)).last_hidden_state, ids, mask, None)

    def first_states(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor | None:
        """The last layer's states at position 0 alone [B, H], its other rows not computed; None where this layout
        cannot (then read `hidden_states(ids, mask)[:, 0]`). BERT's family can (`BertLayout.first_states`)."""
        return None

    def loss_gradient(self, ids: torch.Tensor, labels: torch.Tensor, params: Sequence[torch.Tensor],
                      mask: torch.Tensor | None = None, *, scale: float = 1.0) -> tuple[torch.Tensor, ...]:
        """d(scale * loss)/d(params) for one batch: token ids [B, L], labels (classes [B], or
        masked-LM targets [B, L] with -100 where unmasked), in the model's current train/eval mode.
        A parameter the loss does not reach gets zeros. This is how an attack prices a guessed
        sentence's own gradient (a peel, a certificate, a likelihood term)."""
        params = list(params)
        with torch.enable_grad():
            loss = self.model(**self.inputs(ids, mask), labels=labels).loss
            grads = torch.autograd.grad(loss * scale, params, allow_unused=True)
        return tuple(torch.zeros_like(p) if g is None else g for p, g in zip(params, grads))

    def _restore(self, h: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None,
                 positions: torch.Tensor | None) -> torch.Tensor:
        """Per-position outputs back at the columns the caller gave (left padding moved them)."""
        if self.padding is None:
            return h
        return self.padding.restore(h, self.padding.arrange(ids, mask, positions)[3])

    def classifier_inputs(self, ids: torch.Tensor, mask: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """(features entering the classifier's last linear layer [B, F], logits [B, C])."""
        seen: dict[str, torch.Tensor] = {}
        handle = self.classifier().output.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
        try:
            logits = self.model(**self.inputs(ids, mask)).logits
        finally:
            handle.remove()
        return seen["x"], logits


def linear_head(layout: Layout, output: nn.Linear, *modules: nn.Module) -> ClassifierHead:
    """A classification head ending in `output`, made of `modules` (output among them)."""
    bias = layout.name(output.bias) if output.bias is not None else None
    return ClassifierHead(output, layout.name(output.weight), bias, layout.names(*modules))
