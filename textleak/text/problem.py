"""Text as a gradient-matching problem: dummy embeddings and soft labels through an HF model.

Variables:
    embeddings   [B, L, H] dummy word embeddings, fed through `inputs_embeds` (positions that the
                 public tokenizer template fixes — [CLS], [SEP], [PAD] — are not free)
    label_logits [B, C] (classification) or [M, V] (masked-LM, one row per masked position),
                 softmaxed into soft labels; absent when the labels are declared known
The input-embedding matrix is not matched: through `inputs_embeds` its gradient (a sparse
scatter of the input gradient into the rows of the true tokens) cannot be reproduced.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..errors import InputError, MissingKnowledgeError
from ..threat import Observation
from .decode import NearestTokens, allowed_token_ids, ids_to_text


#: model_type -> the MLM head module that first receives the encoder's hidden states. Feeding it
#: only the masked positions skips the vocabulary projection everywhere else (most of the cost).
MLM_HEAD_INPUT = {"bert": "cls", "roberta": "lm_head", "xlm-roberta": "lm_head", "distilbert": "vocab_transform",
                  "albert": "predictions", "electra": "generator_predictions"}


class TextMatchingProblem:
    def __init__(self, target, observation: Observation, *, decode_metric: str = "cosine",
                 names: Sequence[str] | None = None, candidates: torch.Tensor | None = None,
                 init_scale: float = 1.0):
        self.target = target
        self.model = target.model
        self.tokenizer = target.tokenizer
        self.task = observation.task
        self.decode_metric = decode_metric
        know = observation.knowledge
        if know.seq_lengths is None:
            raise MissingKnowledgeError("this attack needs the sequence lengths (declared knowledge 'seq_lengths')")
        self.lengths = [int(n) for n in know.seq_lengths]
        self.batch_size = len(self.lengths)
        self.seq_len = max(self.lengths)
        if self.seq_len > target.max_positions:
            raise InputError(f"sequence length {self.seq_len} exceeds the model's {target.max_positions} positions")

        embedding = self.model.get_input_embeddings().weight
        self.matrix = embedding.detach()
        params = dict(self.model.named_parameters())
        skip = {n for n, p in params.items() if p is embedding}
        wanted = list(names) if names is not None else [n for n in params if n in observation.gradients]
        self.names = [n for n in wanted if n not in skip and n in observation.gradients]
        if not self.names:
            raise MissingKnowledgeError("the gradient file shares no parameter this attack can match "
                                        "(it needs gradients of layers above the word embeddings)")
        self.params = [params[n] for n in self.names]
        self.candidates = candidates if candidates is not None else allowed_token_ids(self.tokenizer)

        B, L = self.batch_size, self.seq_len
        self.attention_mask = torch.zeros(B, L, dtype=torch.long)
        for b, n in enumerate(self.lengths):
            self.attention_mask[b, :n] = 1
        self.free = self.attention_mask.bool().clone()
        fixed_ids = torch.full((B, L), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        if know.special_tokens:
            template = self.tokenizer("", add_special_tokens=True)["input_ids"]
            head, tail = template[:1], template[1:]
            for b, n in enumerate(self.lengths):
                if n < len(template):
                    raise InputError(f"sequence {b + 1} is shorter than the tokenizer's special tokens")
                fixed_ids[b, : len(head)] = torch.tensor(head)
                fixed_ids[b, n - len(tail): n] = torch.tensor(tail)
                self.free[b, : len(head)] = False
                self.free[b, n - len(tail): n] = False
        self.fixed_ids = torch.where(self.free, torch.zeros_like(fixed_ids), fixed_ids)
        self.fixed = self.matrix[self.fixed_ids]
        self.init_std = float(self.matrix.std()) * init_scale

        self.known_labels: torch.Tensor | None = None
        if self.task == "classify":
            self.num_classes = int(self.model.config.num_labels)
            if self.num_classes < 2:
                raise InputError("regression heads (num_labels=1) are not supported")
            if know.labels is not None:
                self.known_labels = torch.tensor([int(y) for y in know.labels])
        else:
            if know.mask_positions is None:
                raise MissingKnowledgeError("masked-LM matching needs the masked positions ('mask_positions')")
            self.mask_index = [(b, p) for b, pos in enumerate(know.mask_positions) for p in pos]
            if not self.mask_index:
                raise InputError("masked-LM gradient without any masked position")
            self.num_classes = self.matrix.shape[0]
            if know.labels is not None:
                self.known_labels = torch.tensor([int(t) for row in know.labels for t in row])
        self.assumed = {"labels": "known" if self.known_labels is not None else "optimised jointly",
                        "seq_lengths": "known", "special_tokens": bool(know.special_tokens)}

    # -- MatchingProblem -------------------------------------------------------------------
    def init(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        B, L, H = self.batch_size, self.seq_len, self.matrix.shape[1]
        variables = {"embeddings": (torch.randn(B, L, H, generator=generator) * self.init_std).requires_grad_()}
        if self.known_labels is None:
            rows = B if self.task == "classify" else len(self.mask_index)
            variables["label_logits"] = torch.randn(rows, self.num_classes, generator=generator).requires_grad_()
        return variables

    def inputs_embeds(self, variables: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.where(self.free[..., None], variables["embeddings"], self.fixed)

    def soft_labels(self, variables: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.known_labels is not None:
            return F.one_hot(self.known_labels, self.num_classes).float()
        return variables["label_logits"].softmax(-1)

    def loss(self, variables: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The victim's training loss (HF's mean cross-entropy) with soft dummy labels."""
        kwargs = {"inputs_embeds": self.inputs_embeds(variables), "attention_mask": self.attention_mask}
        if "token_type_ids" in self.tokenizer.model_input_names:
            kwargs["token_type_ids"] = torch.zeros_like(self.attention_mask)
        if self.task == "classify":
            logits = self.model(**kwargs).logits
        else:
            b, p = (list(x) for x in zip(*self.mask_index))
            head = getattr(self.model, MLM_HEAD_INPUT.get(self.model.config.model_type, ""), None)
            if head is None:
                logits = self.model(**kwargs).logits[b, p]
            else:
                hook = head.register_forward_pre_hook(lambda mod, args: (args[0][b, p][None],) + args[1:])
                try:
                    logits = self.model(**kwargs).logits[0]
                finally:
                    hook.remove()
        return -(self.soft_labels(variables) * logits.log_softmax(-1)).sum(-1).mean()

    def gradients(self, variables: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        return list(torch.autograd.grad(self.loss(variables), self.params, create_graph=True))

    def regulariser(self, variables: Mapping[str, torch.Tensor]) -> float:
        return 0.0

    def project(self, variables: Mapping[str, torch.Tensor]) -> None:
        return None

    def decode(self, variables: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        with torch.no_grad():
            emb = self.inputs_embeds(variables)
            ids = self.fixed_ids.clone()
            ids[self.free] = self.nearest(emb[self.free])
            labels = self.soft_labels(variables)
            if self.task == "mlm":
                restricted = labels[:, self.candidates].argmax(-1)
                for (b, p), tok in zip(self.mask_index, self.candidates[restricted].tolist()):
                    ids[b, p] = tok
                predicted_labels = [[int(ids[b, p]) for p in pos] for b, pos in
                                    enumerate(self._positions_by_example())]
            else:
                predicted_labels = labels.argmax(-1).tolist()
        token_ids = [ids[b, :n].tolist() for b, n in enumerate(self.lengths)]
        return {"texts": [ids_to_text(self.tokenizer, row) for row in token_ids],
                "token_ids": token_ids, "labels": predicted_labels}

    def nearest(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The nearest candidate token of each embedding [N, H] (candidate rows prepared once)."""
        cached = getattr(self, "_nearest", None)
        if cached is None or cached.candidates is not self.candidates or cached.metric != self.decode_metric:
            cached = self._nearest = NearestTokens(self.matrix, self.candidates, self.decode_metric)
        return cached(embeddings)

    def _positions_by_example(self) -> list[list[int]]:
        rows: list[list[int]] = [[] for _ in range(self.batch_size)]
        for b, p in self.mask_index:
            rows[b].append(p)
        return rows
