"""DPO baseline (paper §4.5, Figure 4) through ``trl``'s ``DPOTrainer``.

Preference pairs from the train split, one per example:

* intersentence: prompt = the context, chosen = the anti-stereotype sentence, rejected = the
  stereotype sentence;
* intrasentence: prompt = the sentence up to the blank, chosen / rejected = the rest of the
  anti-stereotype / stereotype sentence (from the filled-in blank to the end).

The whitespace before the continuation moves from the prompt to the completion, so that the
completion tokenizes as it does inside the sentence (``" nurse"``, not ``"nurse"``). The policy is
the LoRA model; the reference is the same model with its adapter disabled (``ref_model=None`` with a
peft model). ``beta`` is DPO's inverse temperature (``--beta``); each step takes
``(n_forget + n_retain) // 2`` pairs, as many sentences as a BiasUnlearn step.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from biasunlearn.data.stereoset import StereoExample
from biasunlearn.methods.data import loss_region

log = logging.getLogger(__name__)


def preference_pair(ex: StereoExample) -> dict[str, str] | None:
    """``{"prompt", "chosen", "rejected"}`` of one example, or None when the two sentences do not share
    the text before the blank (a handful of StereoSet rows rewrite it)."""
    if ex.task == "intersentence":
        return {"prompt": ex.context, "chosen": " " + ex.by_label("anti-stereotype").text,
                "rejected": " " + ex.by_label("stereotype").text}
    anti = loss_region(ex, "anti-stereotype", "from_blank")
    stereo = loss_region(ex, "stereotype", "from_blank")
    prompt = anti.text[: anti.loss_from]
    if stereo.text[: stereo.loss_from] != prompt or not prompt.strip():
        return None
    stripped = prompt.rstrip()
    space = prompt[len(stripped):]
    return {"prompt": stripped, "chosen": space + anti.text[anti.loss_from:],
            "rejected": space + stereo.text[stereo.loss_from:]}


def preference_pairs(examples: Sequence[StereoExample], tasks: Sequence[str]) -> list[dict[str, str]]:
    pairs = [p for ex in examples if ex.task in tasks and (p := preference_pair(ex)) is not None]
    skipped = sum(1 for ex in examples if ex.task in tasks) - len(pairs)
    if skipped:
        log.info("DPO: skipped %d example(s) whose sentences differ before the blank", skipped)
    return pairs


def build_dpo_trainer(model, tokenizer, examples: Sequence[StereoExample], cfg, args_kwargs: dict[str, Any],
                      callbacks: list) -> Any:
    """A ``trl.DPOTrainer`` on the train split's preference pairs (``cfg`` is a ``TrainConfig``)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    pairs = preference_pairs(examples, cfg.task_list())
    dataset = Dataset.from_list(pairs).shuffle(seed=cfg.seed)
    kwargs = dict(args_kwargs)
    kwargs.update(per_device_train_batch_size=max(1, (cfg.n_forget + cfg.n_retain) // 2), beta=cfg.beta,
                  max_length=cfg.max_length, remove_unused_columns=False, gradient_checkpointing=False)
    kwargs.pop("accelerator_config", None)
    args = DPOConfig(**kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return DPOTrainer(model=model, ref_model=None, args=args, train_dataset=dataset, processing_class=tokenizer,
                      callbacks=callbacks)
