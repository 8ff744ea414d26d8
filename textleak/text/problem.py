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

from ..core.device import module_device
from ..errors import InputError, MissingKnowledgeError, UnsupportedModelError
from ..threat import Observation
from .decode import NearestTokens, allowed_token_ids, ids_to_text


def check_observation(target, observation: Observation, *, infer_lengths: bool = False) -> None:
    """Raise MissingKnowledgeError unless a text matching problem can be built from `observation`
    (with `infer_lengths`, withheld lengths are filled in from the gradient first)."""
    know = observation.knowledge
    if know.seq_lengths is None and not infer_lengths:
        raise MissingKnowledgeError("this attack needs the sequence lengths (declared knowledge 'seq_lengths')")
    if observation.task == "mlm" and know.mask_positions is None:
        raise MissingKnowledgeError("masked-LM matching needs the masked positions ('mask_positions')")
    matched_names(target.model, observation)


def matched_names(model: torch.nn.Module, observation: Observation, names: Sequence[str] | None = None) -> list[str]:
    """Parameters whose shared gradient a dummy batch fed through `inputs_embeds` can reproduce:
    every one but the input-embedding matrix (its gradient is a scatter into the true tokens' rows)."""
    embedding = model.get_input_embeddings().weight
    params = dict(model.named_parameters())
    wanted = list(names) if names is not None else [n for n in params if n in observation.gradients]
    found = [n for n in wanted if params.get(n) is not embedding and n in observation.gradients]
    if not found:
        raise MissingKnowledgeError("the gradient file shares no parameter this attack can match "
                                    "(it needs gradients of layers above the word embeddings)")
    return found


class TextMatchingProblem:
    """Dummy embeddings [B, L, H] (and soft labels) whose gradient is matched; every tensor lives
    on the model's device (random draws come from a CPU generator, so a seed means the same start
    on every device)."""

    def __init__(self, target, observation: Observation, *, decode_metric: str = "cosine",
                 names: Sequence[str] | None = None, candidates: torch.Tensor | None = None,
                 init_scale: float = 1.0):
        check_observation(target, observation)
        self.target = target
        self.model = target.model
        self.tokenizer = target.tokenizer
        self.task = observation.task
        self.decode_metric = decode_metric
        self.device = module_device(self.model)
        know = observation.knowledge
        self.lengths = [int(n) for n in know.seq_lengths]
        self.batch_size = len(self.lengths)
        self.seq_len = max(self.lengths)
        if self.seq_len > target.max_positions:
            raise InputError(f"sequence length {self.seq_len} exceeds the model's {target.max_positions} positions")
        self.matrix = self.model.get_input_embeddings().weight.detach()
        self.init_std = float(self.matrix.std()) * init_scale
        self.names = matched_names(self.model, observation, names)
        params = dict(self.model.named_parameters())
        self.params = [params[n] for n in self.names]
        self.candidates = (candidates if candidates is not None else allowed_token_ids(self.tokenizer)).to(self.device)
        self._template(know.special_tokens)
        self._labels(know)
        self.assumed = {"labels": "known" if self.known_labels is not None else "optimised jointly",
                        "seq_lengths": "known", "special_tokens": bool(know.special_tokens)}

    def _template(self, special_tokens: bool) -> None:
        """Attention mask, the free positions and the ids the public template fixes ([CLS], [SEP], [PAD])."""
        B, L = self.batch_size, self.seq_len
        attention_mask = torch.zeros(B, L, dtype=torch.long)
        for b, n in enumerate(self.lengths):
            attention_mask[b, :n] = 1
        free = attention_mask.bool().clone()
        fixed_ids = torch.full((B, L), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        if special_tokens:
            template = self.tokenizer("", add_special_tokens=True)["input_ids"]
            head, tail = template[:1], template[1:]
            for b, n in enumerate(self.lengths):
                if n < len(template):
                    raise InputError(f"sequence {b + 1} is shorter than the tokenizer's special tokens")
                fixed_ids[b, : len(head)] = torch.tensor(head)
                fixed_ids[b, n - len(tail): n] = torch.tensor(tail)
                free[b, : len(head)] = False
                free[b, n - len(tail): n] = False
        self.attention_mask = attention_mask.to(self.device)
        self.free = free.to(self.device)
        self.fixed_ids = torch.where(free, torch.zeros_like(fixed_ids), fixed_ids).to(self.device)
        self.fixed = self.matrix[self.fixed_ids]

    def _labels(self, know) -> None:
        """Classes [B] or masked tokens [M] when declared known; else soft labels are optimised."""
        self.known_labels: torch.Tensor | None = None
        if self.task == "classify":
            self.num_classes = int(self.model.config.num_labels)
            if self.num_classes < 2:
                raise InputError("regression heads (num_labels=1) are not supported")
            if know.labels is not None:
                self.known_labels = torch.tensor([int(y) for y in know.labels], device=self.device)
            return
        self.mask_index = [(b, p) for b, pos in enumerate(know.mask_positions) for p in pos]
        if not self.mask_index:
            raise InputError("masked-LM gradient without any masked position")
        self.num_classes = self.matrix.shape[0]
        if know.labels is not None:
            self.known_labels = torch.tensor([int(t) for row in know.labels for t in row], device=self.device)

    # -- MatchingProblem -------------------------------------------------------------------
    def init(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        B, L, H = self.batch_size, self.seq_len, self.matrix.shape[1]
        embeddings = torch.randn(B, L, H, generator=generator) * self.init_std
        variables = {"embeddings": embeddings.to(self.device).requires_grad_()}
        if self.known_labels is None:
            rows = B if self.task == "classify" else len(self.mask_index)
            logits = torch.randn(rows, self.num_classes, generator=generator)
            variables["label_logits"] = logits.to(self.device).requires_grad_()
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
            # the MLM head's first module, fed only the masked positions: that skips the vocabulary
            # projection everywhere else (most of the cost)
            head = _mlm_head_input(self.model)
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


def _mlm_head_input(model) -> torch.nn.Module | None:
    """The masked-LM head's first module (per the model's layout), or None without a layout."""
    from .layouts import layout_for

    try:
        return layout_for(model).mlm_head().module
    except UnsupportedModelError:
        return None
