"""The target descent's screen pass (`beyond_rank_targets.TargetDescent._nearest` with `sweep_screen` K > 0: every
candidate of a sweep position scored with the model at bfloat16, the K nearest rescored at float32), made cheaper
(#16, session 44, recipes/measured/large_batch_s44/fin64_README.md).

Where the finish's CPU goes (CoLA dev 0, batch 64, 450 CPU s, under cProfile): the sweeps are ~2/3 of the finish,
and in them the screen's bfloat16 forwards: ~1,000 candidates a pair sweep against ~40 rescored. Under `torch.autocast`
(the default) each screen forward casts every weight matrix to bfloat16 anew, and runs the element-wise work
between the products with casts back and forth.

- `region()` (always, decisions unchanged): one autocast region over all the sweeps, so that autocast's weight
  cache casts each weight once per region rather than once per forward; the float32 rescoring runs in a nested
  region with autocast off (`exact()`). The screen's states are bit for bit those of a fresh autocast region per
  call (the same casts of the same weights), so every decision is the same.
- `copy` (`beyond_rank`'s option `sweep_screen_copy`, on since session 44; `=false` turns it off): the screen runs a
  bfloat16 copy of the model instead (made once, no autocast): no casts at all, and layer norms, softmax and the
  residual adds at bfloat16 too.
  Its states differ from autocast's by ~1e-2 relative, so which K candidates get rescored can differ; every change
  a sweep keeps is still a float32 gain.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator, Sequence

import torch


class RoughStates:
    """The screen's [CLS] states of candidate sentences (module doc). `states(seqs)` -> [len(seqs), H] (float64,
    CPU), as `cls_states(layout, seqs)` computes them under bfloat16 autocast (or, with `copy`, on a bfloat16 copy
    of the model). `cls_states`: the function that reads the states (`beyond_rank_targets.cls_states`)."""

    def __init__(self, layout: Any, cls_states: Any, copy_model: bool = False):
        self.layout, self.cls_states, self.copy_model = layout, cls_states, copy_model
        self.device_type = torch.device(layout.device).type
        self._half: Any = None  # the bfloat16 copy of the model, made at the first `copy` call

    @contextlib.contextmanager
    def region(self, on: bool = True) -> Iterator[None]:
        """One autocast region for a run of screen passes (the weights cast once in it); none with `copy` or where
        not `on` (no screen)."""
        if self.copy_model or not on:
            yield
            return
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            yield

    def exact(self) -> Any:
        """The float32 rescoring's context: autocast off (inside `region`, the cached casts stay)."""
        return torch.autocast(self.device_type, enabled=False)

    def states(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        if self.copy_model:
            with self.exact():
                return self.cls_states(self._view(), seqs)
        with torch.autocast(self.device_type, dtype=torch.bfloat16):  # nested in `region`: its cache is used
            return self.cls_states(self.layout, seqs)

    def _view(self) -> Any:
        """The layout on the bfloat16 copy of its model (its padding and offset as the layout's now)."""
        if self._half is None:
            self._half = copy.deepcopy(self.layout.model).to(torch.bfloat16).requires_grad_(False)
        view = copy.copy(self.layout)
        view.model, view.base = self._half, self._half.base_model
        return view
