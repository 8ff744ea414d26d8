"""How far a guessed sentence lies from the approximate spans of a train-mode step's Q/K/V inputs.

The Q/K/V weight gradient of layer k spans that layer's inputs. In train mode the inputs of layers
above 0 carry the step's dropout from below, so a sentence computed in eval mode lies near, not in,
those spans: its cost is the summed squared relative residual of its tokens' inputs, over the
span layers. A cost depends on the sentence's tokens alone, so costs are kept by sentence (each
sentence is run once however often the search asks), and the sentences a search asks for at once
run as one padded batch through the layers below the highest span layer, once for all layers.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ...text.leaks import LayerSpan, padded, slot_residuals


def span_basis(layout, grads, layer: int, tokens: int) -> torch.Tensor:
    """An orthonormal basis [H, <=tokens] of the leading directions of layer `layer`'s Q/K/V gradient."""
    G = layout.qkv_gradient(grads, layer, "the position attack's span")
    _, _, vh = torch.linalg.svd(G, full_matrices=False)
    return vh[:min(tokens, vh.shape[0])].T.contiguous()


class SpanScore:
    """Costs of sentences against the spans {layer: basis [H, r]} (`cost`), remembered by sentence.

    chunk: most sentences run in one forward (bounds memory). `evaluated` counts the sentences run."""

    def __init__(self, layout, spans: dict[int, torch.Tensor], chunk: int = 256):
        self.layout, self.spans, self.chunk = layout, dict(spans), chunk
        self.known: dict[tuple[int, ...], float] = {}
        self.evaluated = 0
        self._span1: LayerSpan | None = None

    def local(self, seq: Sequence[int], i: int, cands: Sequence[int]) -> torch.Tensor | None:
        """Squared layer-1 residual of each candidate token [len(cands)] at position i of `seq`,
        the rest of the sentence its context: one token through layer 0 per candidate
        (`leaks.slot_residuals`), a cheap first cut before whole-sentence costs. None without a
        layer-1 span or where the layout cannot run layer 0 for one token."""
        if 1 not in self.spans:
            return None
        if self._span1 is None:
            basis = self.spans[1].double()
            self._span1 = LayerSpan(1, basis, torch.ones(1, dtype=torch.double), basis.shape[1], 0.0, 1.0)
        dev = self.layout.device
        try:
            out = slot_residuals(self.layout, self._span1, torch.tensor([list(seq[:i])], dtype=torch.long, device=dev),
                                 torch.tensor(list(cands), dtype=torch.long, device=dev), list(seq[i + 1:]))
        except NotImplementedError:
            return None
        return out[0].cpu()

    @property
    def layers(self) -> list[int]:
        return sorted(self.spans)

    def cost(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        """Cost of each sentence [len(seqs)] (float64, on the CPU)."""
        keys = [tuple(int(t) for t in s) for s in seqs]
        if self.spans:
            todo = sorted(dict.fromkeys(k for k in keys if k not in self.known), key=len)
            for start in range(0, len(todo), self.chunk):  # by length: little padding in each forward
                part = todo[start:start + self.chunk]
                self.known.update(zip(part, self._run(part).tolist()))
                self.evaluated += len(part)
        return torch.tensor([self.known.get(k, 0.0) for k in keys], dtype=torch.double)

    def _run(self, seqs: list[tuple[int, ...]]) -> torch.Tensor:
        ids, mask = padded(seqs, self.layout.device)
        total = torch.zeros(len(seqs), dtype=torch.double, device=ids.device)
        with torch.no_grad():
            for layer, h in self.inputs(ids, mask).items():
                basis = self.spans[layer]
                if basis.dtype != h.dtype:  # in the model's dtype: enough to rank, cheaper than float64
                    basis = self.spans[layer] = basis.to(h.dtype)
                r2 = (h - (h @ basis) @ basis.T).pow(2).sum(-1) / h.pow(2).sum(-1).clamp_min(1e-30)
                total += (r2 * mask).sum(1).double()
        return total.cpu()

    def inputs(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[int, torch.Tensor]:
        """Hidden states entering each span layer {layer: [B, L, H]}, in one forward that stops
        at the highest (the layout's `layer_inputs`, for several layers at once)."""
        layout = self.layout
        return layout.module_inputs(ids, mask, {k: (layout.layer(k), layout.layer_call(k)) for k in self.layers})
