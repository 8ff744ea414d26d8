"""Per-example gradient inner products and norms without per-example gradients ("ghost" norms,
as Opacus computes clipping norms; Goodfellow 2015, Li et al. 2022).

For a batch of W hypotheses (token sequences of one length, each with its label), `GhostScorer`
returns, for every example i, <T, g_i> and ||g_i||^2, where g_i is the gradient of example i's own
loss with respect to every parameter `T` (a name-keyed target) holds, in one forward and one
backward pass of the batch. What makes it cheap:
- a linear map's weight gradient is sum_p d_p x_p^T (d: the gradient at its output, x: its
  input, over the positions p of the example), so <T, g> = sum_p d_p^T T x_p and
  ||g||^2 = sum_pq (d_p . d_q)(x_p . x_q), an L x L Gram product;
- a LayerNorm's weight gradient is sum_p d_p * xhat_p (xhat: its normalised input), its bias's
  sum_p d_p;
- the word-, position- and token-type-embedding gradients are rows of e_p, the gradient at the
  embeddings' sum (the input of their LayerNorm): row t of the word embeddings gets the sum of
  e_p over the positions holding t.

So a Gaussian log-likelihood of a shared gradient, -||G - g(x)||^2 / 2 sigma^2 up to a constant,
is 2 <G, g(x)> - ||g(x)||^2 (over 2 sigma^2) for each hypothesis x, at the cost of training on the
hypotheses. Encoders whose layout (`text.layouts`) names the embeddings and their LayerNorm, built
of torch.nn.Linear and LayerNorm (BERT, RoBERTa, ELECTRA), classification.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from .layouts import Layout


@dataclass
class GhostScores:
    """Per example: <T, g_i> (`dot`) and ||g_i||^2 (`norm2`) over the target's parameters, in double;
    e: the gradient at each position's embedding sum [W, L, H] (what the embedding rows receive);
    probs: the model's class probabilities [W, C] (None where the output has no logits)."""

    dot: torch.Tensor
    norm2: torch.Tensor
    e: torch.Tensor
    probs: torch.Tensor | None = None


class GhostScorer:
    """<T, g_i> and ||g_i||^2 for every example of a batch of hypotheses (see the module docstring).

    layout: the classifier's layout (eval mode is the caller's business); target: name -> tensor,
    a subset of the model's parameter names (names missing from it are left out of both sums)."""

    def __init__(self, layout: Layout, target: Mapping[str, torch.Tensor]):
        self.layout, self.model = layout, layout.model
        self.target = {n: t.float().to(layout.device) for n, t in target.items()}
        self.emb_ln = layout.embedding_norm
        self.names = {module: name for name, module in self.model.named_modules()}
        self.word, self.position = layout.word_embedding_name, layout.position_embedding_name
        types = layout.token_type_embeddings
        self.token_type = layout.name(types.weight) if types is not None else None

    def __call__(self, ids: torch.Tensor, labels: torch.Tensor) -> GhostScores:
        """ids [W, L] (no padding), labels [W]; scores on the model's device."""
        ids, labels = ids.to(self.layout.device), labels.to(self.layout.device)
        records: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor]] = []

        def keep(module, args, output):
            records.append((module, args[0], output))

        hooks = [m.register_forward_hook(keep) for m in self.model.modules()
                 if isinstance(m, (torch.nn.Linear, torch.nn.LayerNorm))]
        try:
            with torch.enable_grad():
                out = self.model(**self.layout.inputs(ids), labels=labels)
                loss = out.loss * ids.shape[0]  # the sum of each example's own loss
                wanted = [o for _, _, o in records]
                emb_in = next(x for m, x, _ in records if m is self.emb_ln)
                grads = torch.autograd.grad(loss, wanted + [emb_in])
        finally:
            for h in hooks:
                h.remove()
        W = ids.shape[0]
        dot = torch.zeros(W, dtype=torch.float64, device=ids.device)
        norm2 = torch.zeros(W, dtype=torch.float64, device=ids.device)
        for (module, x, _), d in zip(records, grads[:-1]):
            a, b = self._module(module, x.detach(), d.detach())
            dot += a
            norm2 += b
        e = grads[-1].detach()
        a, b = self._embeddings(ids, e)
        logits = getattr(out, "logits", None)
        probs = logits.detach().double().softmax(-1) if logits is not None and logits.dim() == 2 else None
        return GhostScores(dot + a, norm2 + b, e, probs)

    def _module(self, module, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        name = self.names[module]
        W = x.shape[0]
        x = x.reshape(W, -1, x.shape[-1])
        d = d.reshape(W, -1, d.shape[-1])
        dot = torch.zeros(W, dtype=torch.float64, device=x.device)
        norm2 = torch.zeros(W, dtype=torch.float64, device=x.device)
        weight, bias = self.target.get(f"{name}.weight"), self.target.get(f"{name}.bias")
        if isinstance(module, torch.nn.LayerNorm):
            xhat = torch.nn.functional.layer_norm(x, module.normalized_shape, eps=module.eps)
            if weight is not None:
                g = (d * xhat).sum(1)
                dot += (g @ weight).double()
                norm2 += g.double().pow(2).sum(1)
        elif weight is not None:
            dot += ((d @ weight) * x).sum((1, 2)).double()
            norm2 += (torch.bmm(d, d.transpose(1, 2)) * torch.bmm(x, x.transpose(1, 2))).sum((1, 2)).double()
        if bias is not None:
            g = d.sum(1)
            dot += (g @ bias).double()
            norm2 += g.double().pow(2).sum(1)
        return dot, norm2

    def _embeddings(self, ids: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        W, L, _ = e.shape
        dot = torch.zeros(W, dtype=torch.float64, device=e.device)
        norm2 = torch.zeros(W, dtype=torch.float64, device=e.device)
        word = self.target.get(self.word)
        if word is not None:
            dot += (word[ids] * e).sum((1, 2)).double()
            same = (ids[:, :, None] == ids[:, None, :]).to(e.dtype)
            norm2 += (torch.bmm(e, e.transpose(1, 2)) * same).sum((1, 2)).double()
        position = self.target.get(self.position)
        if position is not None:
            rows = self.layout.position_ids(torch.arange(L, device=e.device))
            dot += (position[rows][None] * e).sum((1, 2)).double()
            norm2 += e.double().pow(2).sum((1, 2))
        token_type = self.target.get(self.token_type) if self.token_type is not None else None
        if token_type is not None:
            g = e.sum(1)
            dot += (g @ token_type[0]).double()
            norm2 += g.double().pow(2).sum(1)
        return dot, norm2
