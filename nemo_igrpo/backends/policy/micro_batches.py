"""How a step's sequences become micro-batches: by a token budget instead of a row count, and packed where the
attention allows it.

The trainer's batch is ``[S, L]``, right-padded to the step's longest sequence; Stage-2 sequences (problem + draft +
completion) vary a lot in length, so most of a padded ``[S, L]`` is padding. Three layouts (``policy.micro_batching``):

* ``padded``: ``micro_batch_size`` rows in the batch's order, each micro-batch ``L`` wide (the reference layout);
* ``bucketed``: rows sorted by length (longest first) and cut into micro-batches of at most ``token_budget``
  padded tokens (rows x the micro-batch's own longest row);
* ``packed``: several sequences share a row (first-fit decreasing into rows of ``row_capacity`` tokens), and rows are
  grouped into micro-batches of at most ``token_budget`` tokens. Attention must not cross sequences: megatron's local
  attention takes a block-diagonal causal mask (``attention_mask``); under Transformer Engine one row is one packed
  THD micro-batch with ``cu_seqlens`` (``packed_seq_params``).

A ``MicroBatch`` knows where each sequence sits (row, offset, length), gathers the model's input from the batch and
scatters per-token outputs back to one row per sequence, so the loss sees the usual ``[n, width]`` layout and the
step-wide ``LossNormalizer`` gives the same gradient for every layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

LAYOUTS = ("padded", "bucketed", "packed")


@dataclass(frozen=True)
class Segment:
    """Sequence ``index`` of the step batch, at ``row``/``offset`` of its micro-batch, ``length`` tokens."""

    index: int
    row: int
    offset: int
    length: int


@dataclass
class MicroBatch:
    rows: int
    width: int
    segments: list[Segment] = field(default_factory=list)

    @property
    def packed(self) -> bool:
        return any(s.offset > 0 for s in self.segments)

    @property
    def tokens(self) -> int:
        """Real tokens (the rest of rows x width is padding)."""
        return sum(s.length for s in self.segments)

    @property
    def indices(self) -> torch.Tensor:
        """Batch rows of this micro-batch's sequences, in segment order."""
        return torch.tensor([s.index for s in self.segments], dtype=torch.long)

    @property
    def seq_width(self) -> int:
        """Width of the per-sequence layout ``unpack`` returns (the longest sequence here)."""
        return max(s.length for s in self.segments)

    def gather_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[rows, width]`` model input from the batch's ``[S, L]`` ids (padding: 0, never attended to)."""
        out = torch.zeros(self.rows, self.width, dtype=input_ids.dtype, device=input_ids.device)
        for s in self.segments:
            out[s.row, s.offset:s.offset + s.length] = input_ids[s.index, :s.length]
        return out

    def position_ids(self, device: torch.device) -> torch.Tensor:
        """Positions restart at 0 for every sequence of a packed row."""
        pos = torch.zeros(self.rows, self.width, dtype=torch.long)
        for s in self.segments:
            pos[s.row, s.offset:s.offset + s.length] = torch.arange(s.length)
        return pos.to(device)

    def attention_mask(self, device: torch.device) -> torch.Tensor:
        """megatron's boolean mask (True = masked): causal, and for packed rows block-diagonal, so that no token
        attends to another sequence. ``[1, 1, width, width]`` unpacked, ``[rows, 1, width, width]`` packed."""
        causal = torch.triu(torch.ones(self.width, self.width, dtype=torch.bool), diagonal=1)
        if not self.packed:
            return causal[None, None].to(device)
        segment = torch.full((self.rows, self.width), -1, dtype=torch.long)
        for k, s in enumerate(self.segments):
            segment[s.row, s.offset:s.offset + s.length] = k
        other = segment[:, :, None] != segment[:, None, :]
        return (causal[None] | other)[:, None].to(device)

    def cu_seqlens(self, device: torch.device) -> torch.Tensor:
        """Cumulative sequence starts of a one-row packed micro-batch (Transformer Engine's THD layout), int32."""
        if self.rows != 1:
            raise ValueError("a THD micro-batch is one packed row")
        starts = [0]
        for s in sorted(self.segments, key=lambda s: s.offset):
            starts.append(s.offset + s.length)
        return torch.tensor(starts, dtype=torch.int32, device=device)

    def _flat_index(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        n, w = len(self.segments), self.seq_width
        index = torch.zeros(n, w, dtype=torch.long)
        valid = torch.zeros(n, w, dtype=torch.bool)
        for k, s in enumerate(self.segments):
            index[k, :s.length] = s.row * self.width + s.offset + torch.arange(s.length)
            valid[k, 1:s.length] = True  # position 0 of a sequence has no prediction (nemo_igrpo.batch)
        return index.to(device), valid.to(device)

    def unpack(self, values: torch.Tensor) -> torch.Tensor:
        """Per-token values ``[rows, width]`` (aligned with the model input) as ``[n, seq_width]``, one row per
        sequence in segment order, 0 at each sequence's position 0 and beyond its end. Differentiable."""
        index, valid = self._flat_index(values.device)
        picked = values.reshape(-1)[index.reshape(-1)].reshape(index.shape)
        return torch.where(valid, picked, torch.zeros((), dtype=values.dtype, device=values.device))

    def select(self, per_token: torch.Tensor) -> torch.Tensor:
        """The batch's ``[S, L]`` per-token tensor (mask, old log-probs) in ``unpack``'s layout."""
        return per_token[self.indices.to(per_token.device), :self.seq_width]


def plan_micro_batches(lengths: list[int], layout: str, *, rows_per_micro_batch: int, token_budget: int,
                       row_capacity: int, width: int | None = None, one_row: bool = False) -> list[MicroBatch]:
    """Micro-batches covering every sequence once.

    ``lengths``: tokens of each sequence of the batch. ``padded``: ``rows_per_micro_batch`` rows in order, ``width``
    (default: the longest) wide. ``bucketed``/``packed``: at most ``token_budget`` rows x width per micro-batch (a
    single longer sequence forms its own micro-batch); ``packed`` rows hold up to ``row_capacity`` tokens, and
    ``one_row`` makes every packed row its own micro-batch (the THD layout).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"micro-batch layout {layout!r}: expected one of {list(LAYOUTS)}")
    if any(n < 1 for n in lengths):
        raise ValueError("every sequence needs at least one token")
    if not lengths:
        return []
    longest = max(lengths)
    if layout == "padded":
        size = max(1, rows_per_micro_batch)
        w = width or longest
        return [MicroBatch(rows=len(chunk), width=w,
                           segments=[Segment(i, r, 0, lengths[i]) for r, i in enumerate(chunk)])
                for chunk in (range(a, min(a + size, len(lengths))) for a in range(0, len(lengths), size))]
    # Longest first; ties by index, so the plan is deterministic (every rank of a model-parallel group agrees).
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    if layout == "bucketed":
        out: list[MicroBatch] = []
        for i in order:
            mb = out[-1] if out else None
            # Sorted longest first: the micro-batch's width is its first row's length.
            if mb is None or (mb.rows + 1) * mb.width > token_budget:
                out.append(MicroBatch(rows=1, width=lengths[i], segments=[Segment(i, 0, 0, lengths[i])]))
            else:
                mb.segments.append(Segment(i, mb.rows, 0, lengths[i]))
                mb.rows += 1
        return out
    capacity = max(row_capacity, longest)
    rows: list[list[int]] = []  # sequence indices per packed row
    fill: list[int] = []
    for i in order:
        for r, used in enumerate(fill):
            if used + lengths[i] <= capacity:
                rows[r].append(i)
                fill[r] += lengths[i]
                break
        else:
            rows.append([i])
            fill.append(lengths[i])
    out = []
    for r, members in enumerate(rows):
        mb = out[-1] if out else None
        w = fill[r]
        if mb is None or one_row or (mb.rows + 1) * max(mb.width, w) > token_budget:
            mb = MicroBatch(rows=0, width=w)
            out.append(mb)
        offset = 0
        for i in members:
            mb.segments.append(Segment(i, mb.rows, offset, lengths[i]))
            offset += lengths[i]
        mb.rows += 1
        mb.width = max(mb.width, w)
    return out


def padding_fraction(micro_batches: list[MicroBatch]) -> float:
    """Share of the processed positions (rows x width, summed) that are padding."""
    area = sum(mb.rows * mb.width for mb in micro_batches)
    return 1.0 - sum(mb.tokens for mb in micro_batches) / area if area else 0.0
