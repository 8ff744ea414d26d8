"""`exact-update`'s bounds where the update's rounding decides: the layer-0 candidates' residual bound on an update's
span (`layer0_tolerance`, read against the rounding plateau; `update`'s module doc says why), the retry's widening,
and where the search is layered or leaves the time to the repairs. Moved out of `update.py` (session 41, to keep it
under 400 lines); `update` re-exports them, where the tests import them from."""

from __future__ import annotations

from ..text.leaks import LayerSpan


#: layer-0 candidates: residual up to this many times the span's floor (sqrt of the plateau)
LAYER0_ALLOWANCE = 1.5
#: ... or up to this many times the plateau (the floor squared) where that is more: true pairs measured
#: at residual / plateau <= 43 at lr 1e-2 (where 1.5 floors is more), 28 on RT dev batch 4 at lr 1e-3
#: (K 4 and 8: 1.66-1.70 floors), 56 on RT batch 8 at lr 1e-3 (3.7 floors), 9 on CoLA batch 4 at lr 1e-4
PLATEAU_ALLOWANCE = 60.0
#: the layered search (`update_layers`) only where the batch declares more tokens than this: RT dev batch 0
#: of 8 (215 tokens), K 4, lr 1e-3, is where layer 1 stops separating (0.465 with the plain search);
#: the plain search certifies RT batch 4 (123 tokens, 157 s in session 14), where the layered search
#: spent its 600 s uncertified (0.981, 3 of 4 exact; `fl_defences.py --data rt --batch-size 4 --n 1
#: --no-baseline --noise --dpeps --budget 600 --fedavg 4,1e-3`, load ~5)
LAYERED_TOKENS = 160
#: the retry (the first search uncertified): this many times the first tolerance, at least the spectral one
RETRY_WIDEN = 2.0
#: where the rounding is wide (`update_rounding.ROUNDING_SHARE`), the share of the remaining budget
#: kept from the span search for the repairs (`update_sentences`, `update_repair`)
REPAIR_SHARE = 0.5
#: ... from this rms half-width of layer 0's rounding box over U's rms entry (MiniLM: 0.07-0.10 at lr
#: 1e-3, where the search certifies alone; 0.77-0.97 at lr 1e-4)
REPAIR_ROUNDING = 0.25


def layer0_tolerance(span: LayerSpan) -> float:
    """The layer-0 candidates' residual bound on an update's span: `LAYER0_ALLOWANCE` x its floor,
    or `PLATEAU_ALLOWANCE` x its plateau (the floor squared) where that is more (see the module doc)."""
    return max(LAYER0_ALLOWANCE * span.floor, PLATEAU_ALLOWANCE * span.floor ** 2)
