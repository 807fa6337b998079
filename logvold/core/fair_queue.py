"""Round-robin across groups: whose step runs next when the rotation pool is busy.

A volume with thousands of streams queues thousands of steps at once (start-up, a
full reconcile); in one FIFO a stream of another volume would wait behind all of
them. Here each group (a volume) has its own FIFO and the groups take turns, so a
due step waits for at most one step per other busy group. Pure bookkeeping.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable
from typing import Generic, TypeVar

G = TypeVar("G", bound=Hashable)
K = TypeVar("K", bound=Hashable)


class RoundRobinQueue(Generic[G, K]):
    """Keys waiting for a turn, each in one group; `pop` serves the groups in turn.

    A key is queued at most once (pushing it again keeps its place); `discard` removes
    it wherever it waits. Every operation is O(1) amortised.
    """

    def __init__(self) -> None:
        self._groups: OrderedDict[G, deque[K]] = OrderedDict()
        self._group_of: dict[K, G] = {}

    def __len__(self) -> int:
        return len(self._group_of)

    def __bool__(self) -> bool:
        return bool(self._group_of)

    def __contains__(self, key: object) -> bool:
        return key in self._group_of

    def push(self, group: G, key: K) -> bool:
        """Queue `key` at the end of `group`'s FIFO; False if it already waits."""
        if key in self._group_of:
            return False
        self._group_of[key] = group
        queue = self._groups.get(group)
        if queue is None:
            queue = self._groups[group] = deque()
        queue.append(key)
        return True

    def pop(self) -> K | None:
        """The oldest key of the group whose turn it is (that group then goes last);
        None when nothing waits."""
        while self._groups:
            group, queue = next(iter(self._groups.items()))
            while queue:
                key = queue.popleft()
                if self._group_of.get(key) == group:  # else discarded meanwhile
                    del self._group_of[key]
                    if queue:
                        self._groups.move_to_end(group)
                    else:
                        del self._groups[group]
                    return key
            del self._groups[group]
        return None

    def discard(self, key: K) -> None:
        """Forget `key` (its entry in the group FIFO is skipped lazily by `pop`)."""
        self._group_of.pop(key, None)

    def groups(self) -> int:
        """Groups with keys waiting (discarded keys may still count until popped)."""
        return len(self._groups)
