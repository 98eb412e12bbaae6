"""BiasUnlearn on top of ``transformers.Trainer``: a ``compute_loss`` override plus callbacks.

Running on ``Trainer`` brings accelerate (``accelerate launch`` for several processes or GPUs, with
DeepSpeed or FSDP through their usual configs), checkpoints and ``resume_from_checkpoint``.

Each step's batch is one chunk (forget, retain and KL sequences in one padded batch, see
:mod:`biasunlearn.methods.data`). The policy runs one forward pass over all of it; the reference is
the same model with its LoRA adapter disabled (peft's ``disable_adapter``), run without gradients on
the forget and KL rows only. No second copy of the model is ever held in memory.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from biasunlearn.errors import BiasUnlearnError
from biasunlearn.methods.data import SwapState
from biasunlearn.methods.objective import Method, ObjectiveWeights, objective

log = logging.getLogger(__name__)


class TrainingDiverged(BiasUnlearnError):
    """A loss became NaN or infinite."""


def _unwrap(model):
    while hasattr(model, "module"):  # DDP / DeepSpeed wrappers
        model = model.module
    return model


def chunk_loss(model, inputs: dict[str, Any], method: Method, weights: ObjectiveWeights) -> dict[str, torch.Tensor]:
    """The loss terms of one chunk: one policy forward over all rows, one reference forward (adapter
    disabled, no gradients) over the forget, KL, pair and invariance rows."""
    from biasunlearn.methods.losses import sequence_logprob

    ids, attn, lmask = inputs["input_ids"], inputs["attention_mask"], inputs["loss_mask"]
    nf, nr, nk, npair, ninv = (*(int(x) for x in inputs["sizes"]), 0, 0)[:5]
    f, r, k = slice(0, nf), slice(nf, nf + nr), slice(nf + nr, nf + nr + nk)
    p = slice(k.stop, k.stop + 2 * npair)
    i = slice(p.stop, p.stop + 2 * ninv)
    packed, packed_ref = inputs.get("packed"), inputs.get("packed_ref")

    def run(rows: torch.Tensor | None, pk) -> torch.Tensor:
        """Logits ``[n, T, V]`` of the given rows (all when None), packed when the collator packed them."""
        if pk is not None:
            pk = pk.to(ids.device)
            out = pk.unpack(model(**pk.model_inputs()).logits)
            return out[:, : ids.shape[1]] if out.shape[1] >= ids.shape[1] else torch.nn.functional.pad(
                out, (0, 0, 0, ids.shape[1] - out.shape[1]))
        if rows is None:
            return model(input_ids=ids, attention_mask=attn).logits
        return model(input_ids=ids[rows], attention_mask=attn[rows]).logits

    logits = run(None, packed)

    # The reference runs on the forget, KL, pair and invariance rows that a term needs. The packed reference
    # batch always holds all four parts (the collator does not know the method); unpacked, only those needed.
    need = {"f": method.forget == "npo" and nf > 0, "k": method.kl and nk > 0,
            "p": weights.pair > 0 and npair > 0, "i": weights.invariance > 0 and ninv > 0}
    parts = {"f": f, "k": k, "p": p, "i": i}
    ref: dict[str, torch.Tensor] = {}
    if any(need.values()):
        used = [x for x in parts if packed_ref is not None or need[x]]
        rows = torch.cat([torch.arange(parts[x].start, parts[x].stop) for x in used]).to(ids.device)
        with torch.no_grad(), _unwrap(model).disable_adapter():
            ref_logits = run(None, packed_ref) if packed_ref is not None else run(rows, None)
        at = 0
        for x in used:
            n = parts[x].stop - parts[x].start
            ref[x] = ref_logits[at:at + n]
            at += n
    ref_f_lp = ref_p_lp = ref_i_lp = None
    if need["f"]:
        ref_f_lp = sequence_logprob(ref["f"], ids[f], lmask[f], normalize=weights.normalize_forget)
    if need["p"]:
        ref_p_lp = sequence_logprob(ref["p"], ids[p], lmask[p], normalize=weights.normalize_forget)
    if need["i"]:
        ref_i_lp = sequence_logprob(ref["i"], ids[i], lmask[i])
    return objective(
        method, weights,
        forget_logits=logits[f], forget_ids=ids[f], forget_mask=lmask[f], forget_ref_logprob=ref_f_lp,
        retain_logits=logits[r], retain_ids=ids[r], retain_mask=lmask[r],
        kl_logits=logits[k], kl_ref_logits=ref.get("k") if need["k"] else None, kl_mask=lmask[k],
        pair_logits=logits[p] if need["p"] else None, pair_ids=ids[p], pair_mask=lmask[p],
        pair_ref_logprob=ref_p_lp,
        inv_logits=logits[i] if need["i"] else None, inv_ids=ids[i], inv_mask=lmask[i], inv_ref_logprob=ref_i_lp,
    )


class BiasUnlearnTrainer(Trainer):
    """``Trainer`` whose loss is a :class:`Method`'s combination of the BiasUnlearn terms."""

    def __init__(self, *args, method: Method, weights: ObjectiveWeights, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.method = method
        self.weights = weights
        self._terms: dict[str, list[float]] = defaultdict(list)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        terms = chunk_loss(model, inputs, self.method, self.weights)
        for name, value in terms.items():
            v = float(value.detach())
            if not math.isfinite(v):
                raise TrainingDiverged(
                    f"the {name} loss became {v} at step {self.state.global_step}; the last good checkpoint "
                    f"in {self.args.output_dir} is kept (lower --learning-rate, or resume from it)"
                )
            self._terms[name].append(v)
        return terms["loss"]

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self._terms and "loss" in logs:
            for name, values in self._terms.items():
                if name != "loss":
                    logs[f"loss_{name}"] = round(sum(values) / len(values), 6)
            self._terms.clear()
        super().log(logs, *args, **kwargs)


class JsonlLogCallback(TrainerCallback):
    """Appends every log record (loss terms, learning rate, control readings) to a JSONL file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def trim_train_log(path: Path, step: int) -> int:
    """Drop the records after ``step`` from a JSONL train log; returns how many were dropped.

    A run killed after its last checkpoint logged steps that ``--resume`` trains again from that
    checkpoint; without this they would appear twice. A line the kill cut short is dropped too. The
    file is rewritten atomically."""
    from biasunlearn.utils import atomic_write_text

    def kept(line: str) -> bool:
        try:
            return json.loads(line).get("step", 0) <= step
        except json.JSONDecodeError:
            return False

    path = Path(path)
    if not path.is_file():
        return 0
    lines = [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    keep = [x for x in lines if kept(x)]
    if len(keep) < len(lines):
        atomic_write_text(path, "".join(x + "\n" for x in keep))
    return len(lines) - len(keep)


def save_swap_state(folder: Path, state: SwapState, history: list[dict[str, Any]],
                    extra: dict[str, Any] | None = None) -> None:
    """The swap state, the control history and ``extra`` (best reading, seconds trained) of a checkpoint."""
    from biasunlearn.utils import atomic_write_json

    atomic_write_json(Path(folder) / "biasunlearn_state.json",
                      {"swapped": state.swapped, "resting": state.resting, "distance": state.distance,
                       "history": history, **(extra or {})})


def load_checkpoint_state(folder: Path) -> tuple[SwapState, list[dict[str, Any]], dict[str, Any]]:
    """What :func:`save_swap_state` wrote: the swap state, the control history and the rest of the file."""
    p = Path(folder) / "biasunlearn_state.json"
    if not p.is_file():
        return SwapState(), [], {}
    d = json.loads(p.read_text())
    state = SwapState(dict(d.pop("swapped", {})), dict(d.pop("resting", {})), dict(d.pop("distance", {})))
    return state, list(d.pop("history", [])), d
