"""Which streams a capped volume keeps when it holds more candidates than its cap.

A pod decides how many `*.log` files its volume holds; logvold manages at most
`maxStreams` of them. The choice must be stable, or streams would come and go as a
pod adds files: streams already managed keep their place while they exist, and free
places go to new names in name order. Pure and bounded: the collector below keeps
O(cap) names whatever the listing holds, so 100,000 names cost one pass, not memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class SmallestNames:
    """The `keep` smallest distinct names of a stream of names, in O(keep) memory.

    Names are buffered up to twice `keep`, then cut back to the `keep` smallest; a name
    not below the current ceiling is dropped at once, so most of a huge listing costs
    one comparison per name.
    """

    __slots__ = ("_ceiling", "_keep", "_names")

    def __init__(self, keep: int) -> None:
        if keep < 0:
            raise ValueError(f"keep must be >= 0, got {keep}")
        self._keep = keep
        self._names: set[str] = set()
        self._ceiling: str | None = None
        """Every kept name is below it once the buffer has been cut (None: not cut yet)."""

    def add(self, name: str) -> None:
        if self._keep == 0 or name in self._names:
            return
        if self._ceiling is not None and name >= self._ceiling:
            return
        self._names.add(name)
        if len(self._names) >= 2 * self._keep:
            kept = sorted(self._names)[: self._keep]
            self._names = set(kept)
            self._ceiling = kept[-1]

    def result(self) -> list[str]:
        """The smallest `keep` names seen, sorted."""
        return sorted(self._names)[: self._keep]


def choose_streams(existing: Iterable[str], new: Sequence[str], cap: int) -> list[str]:
    """Up to `cap` names: the `existing` (already managed, still present) ones first, then
    `new` ones in their given (name) order. Existing beyond the cap (a lowered cap) are
    cut in name order too, so the result never depends on listing order."""
    chosen = sorted(set(existing))[:cap]
    taken = set(chosen)
    for name in new:
        if len(chosen) >= cap:
            break
        if name not in taken:
            chosen.append(name)
            taken.add(name)
    return chosen
