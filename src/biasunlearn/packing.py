"""Packing several sequences into one row with a block-diagonal causal attention mask.

Short sequences padded to the longest one waste most of a batch's compute. Packed, each row holds
several sequences back to back; each attends only to itself (causally) and its position ids restart
at 0, so the model computes exactly what it would for the sequences one by one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Packed:
    """Model inputs for packed rows, and where each sequence's tokens sit in them."""

    input_ids: torch.Tensor  # [R, L]
    position_ids: torch.Tensor  # [R, L]
    attention_mask: torch.Tensor  # [R, 1, L, L] additive float mask (0 = attend)
    gather_index: torch.Tensor  # [B, T] flat index into [R*L] of each sequence's token t (padding -> 0)

    def to(self, device) -> Packed:
        return Packed(self.input_ids.to(device), self.position_ids.to(device), self.attention_mask.to(device),
                      self.gather_index.to(device))

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "position_ids": self.position_ids, "attention_mask": self.attention_mask}

    def unpack(self, logits: torch.Tensor) -> torch.Tensor:
        """Packed ``[R, L, V]`` logits -> per-sequence ``[B, T, V]`` (right-padded layout)."""
        flat = logits.reshape(-1, logits.shape[-1])
        return flat[self.gather_index]


def pack_sequences(seqs: list[list[int]], pad_id: int, row_len: int = 0, dtype: torch.dtype = torch.float32) -> Packed:
    """First-fit-decreasing packing of ``seqs`` into rows of at most ``row_len`` tokens.

    ``row_len`` 0 means: the longest sequence or 256 tokens, whichever is larger.
    """
    longest = max(len(s) for s in seqs)
    cap = max(longest, row_len or 256)
    rows: list[list[int]] = []  # sequence indices per row
    fill: list[int] = []
    for i in sorted(range(len(seqs)), key=lambda i: -len(seqs[i])):
        for r, used in enumerate(fill):
            if used + len(seqs[i]) <= cap:
                rows[r].append(i)
                fill[r] += len(seqs[i])
                break
        else:
            rows.append([i])
            fill.append(len(seqs[i]))
    width = max(fill)
    n_rows = len(rows)
    ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    pos = torch.zeros((n_rows, width), dtype=torch.long)
    allowed = torch.zeros((n_rows, width, width), dtype=torch.bool)
    gather = torch.zeros((len(seqs), longest), dtype=torch.long)
    for r, members in enumerate(rows):
        off = 0
        for i in members:
            n = len(seqs[i])
            ids[r, off : off + n] = torch.tensor(seqs[i])
            pos[r, off : off + n] = torch.arange(n)
            allowed[r, off : off + n, off : off + n] = torch.ones(n, n, dtype=torch.bool).tril()
            gather[i, :n] = r * width + off + torch.arange(n)
            off += n
    idx = torch.arange(width)
    allowed[:, idx, idx] = True  # padding attends to itself: no fully masked row
    mask = torch.zeros((n_rows, 1, width, width), dtype=dtype).masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    return Packed(ids, pos, mask, gather)
