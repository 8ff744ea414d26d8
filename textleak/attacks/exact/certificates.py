"""Certificates: the tests a candidate sentence must pass before the search accepts it as one of
the batch's. Each is an object with `admits(search, seq, residual) -> bool`; `Search.take` asks
them in order and accepts a sentence only when all admit it. A certificate may act on the search
when it admits (the peel narrows it to what is left of the batch).

- `SpanCertificate`: the whole-sentence layer-1 residual is what true members of the span can
  show (`LayerSpan.certifies`).
- `PeelCertificate`: the sentence's own gradient comes out of the batch's exactly: the layer-1
  rank drops by what the sentence contributed (`peeling.Peeler`).

A certificate for noisy spans or for updates over several local steps is one more class here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .peeling import Peeler
    from .search import Search


class Certificate(Protocol):
    name: str

    def admits(self, search: "Search", seq: list[int], residual: float) -> bool: ...


class SpanCertificate:
    name = "layer-1 span"

    def admits(self, search: "Search", seq: list[int], residual: float) -> bool:
        return search.certified(seq, residual)


class PeelCertificate:
    """The second test: a batch sentence's own gradient comes out of the batch's exactly. A
    sentence refused before any other came out is kept aside (`search.pending`): peeling may not
    hold for this gradient at all (per-example clipping, dropout, a defence)."""

    name = "peel"

    def __init__(self, peeler: "Peeler"):
        self.peeler = peeler

    def admits(self, search: "Search", seq: list[int], residual: float) -> bool:
        # (left padding searches one length at a time: `later` counts the sentences other searches want)
        rest = self.peeler.peel(seq, last=len(search.missing) + search.later == 1)
        if rest is None:
            if not self.peeler.labels:  # no sentence has come out yet: peeling may not hold here
                search.pending.append((residual, seq))
            return False
        if rest.span1 is not None:
            search.narrow(rest)
        return True
