"""A deterministic, resumable order over training prompts."""

from __future__ import annotations

import random
from typing import Any, Generic, Sequence, TypeVar

T = TypeVar("T")


class PromptSampler(Generic[T]):
    """Yields items in a fresh shuffled order each epoch, a pure function of ``(seed, epoch)``.

    A batch may span an epoch boundary, so every batch has ``n`` items until ``num_epochs`` (None: unlimited) runs
    out; then the last batch is short and the next call raises ``StopIteration``. ``state_dict()`` captures the
    position; a sampler restored with ``load_state_dict`` yields exactly the batches the original would have.
    """

    def __init__(self, items: Sequence[T], seed: int = 0, num_epochs: int | None = None):
        if len(items) == 0:
            raise ValueError("PromptSampler needs at least one item")
        self.items = items
        self.seed = seed
        self.num_epochs = num_epochs
        self.epoch = 0
        self.position = 0  # index into this epoch's order of the next item
        self._order: list[int] = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.items)))
        # A string seed: independent of Python's hash randomisation, distinct per epoch.
        random.Random(f"prompt-sampler-{self.seed}-{epoch}").shuffle(order)
        return order

    @property
    def exhausted(self) -> bool:
        """True once ``num_epochs`` full passes have been handed out."""
        return self.num_epochs is not None and self.epoch >= self.num_epochs

    def next_batch(self, n: int) -> list[T]:
        """The next ``n`` items (fewer at the very end of the last epoch)."""
        if n <= 0:
            raise ValueError(f"batch size must be positive, got {n}")
        if self.exhausted:
            raise StopIteration("prompt sampler exhausted")
        batch = []
        while len(batch) < n and not self.exhausted:
            take = min(n - len(batch), len(self._order) - self.position)
            batch.extend(self.items[i] for i in self._order[self.position : self.position + take])
            self.position += take
            if self.position == len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._permutation(self.epoch)
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Plain-JSON state; the number of items is stored to refuse resuming over a different dataset."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position, "num_items": len(self.items)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (see ``state_dict``)."""
        if state["num_items"] != len(self.items):
            raise ValueError(
                f"sampler state is for {state['num_items']} items, this dataset has {len(self.items)}"
            )
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = self._permutation(self.epoch)
