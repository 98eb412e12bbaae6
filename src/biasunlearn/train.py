"""``biasunlearn.train``: BiasUnlearn (or an ablation / unlearning baseline) on any causal LM, with LoRA.

Writes to ``out``:

* ``adapter/``: a peft adapter folder (``PeftModel.from_pretrained`` loads it) with
  ``provenance.json`` (base model and weight checksum, data sha256s, the full config, package
  versions, control readings); written atomically;
* ``checkpoints/``: Trainer checkpoints (``--resume`` continues from the latest after a kill);
* ``train_log.jsonl``: one record per step (each loss term, learning rate) and per control reading.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from biasunlearn.data.paths import STEREOSET_DEV, STEREOSET_TEST, dataset_checksums, resolve_data_dir
from biasunlearn.data.splits import CONTROL_BY, check_no_leakage, make_splits
from biasunlearn.data.stereoset import BIAS_TYPES
from biasunlearn.errors import ConfigError
from biasunlearn.methods.control import ControlCallback, ControlConfig
from biasunlearn.methods.data import (
    GROUPINGS,
    INVARIANCE_SCOPES,
    KL_REGIONS,
    REGIONS,
    TYPE_SAMPLING,
    ChunkStream,
    SwapState,
    build_pools,
    collate_chunk,
    draw_balance_wordlist,
    group_balanced,
    invariance_pairs,
    parse_type_boost,
    parse_type_shares,
)
from biasunlearn.methods.objective import METHODS, ObjectiveWeights
from biasunlearn.models import DEFAULT_MODEL, load_model_and_tokenizer, lora_target_modules, model_info
from biasunlearn.scoring import ScoringConfig, resolve_start_token_id
from biasunlearn.utils import atomic_directory, atomic_write_json, package_versions

log = logging.getLogger(__name__)

PRESETS: dict[str, dict[str, Any]] = {
    # A few minutes on a 2-core CPU: shows the whole loop (control readings, swaps, adapter, report).
    "quick": {"max_steps": 12, "control_every": 4, "control_per_type": 20, "n_retain": 12, "n_kl": 4,
              "save_steps": 6},
}


@dataclass
class TrainConfig:
    """Options of ``biasunlearn train``.

    Attributes:
        model: built-in alias, hub id, local checkpoint folder or .gguf file.
        out: output folder (adapter/, checkpoints/, train_log.jsonl).
        method: biasunlearn, or an ablation (no_retention, no_kl, no_adversarial, no_swapping), an
            unlearning baseline (ga, npo, graddiff) or a fine-tuning baseline (cda, sft, dpo).
        preset: named set of defaults applied before the YAML file and flags (quick).
        data_dir: benchmark data folder (default: $BIASUNLEARN_DATA, then the user cache).
        seed: seed of the control split, the data order and the adapter initialisation.
        learning_rate: peak AdamW learning rate (linear schedule).
        warmup_steps: linear warm-up steps.
        max_steps: step budget.
        n_forget: forget sequences per step (paper: 4).
        n_retain: retain sequences per step (paper: 28).
        n_kl: unrelated sequences per step for the KL term.
        adversarial_fraction: share of each type's anti-stereotypes added to its forget set (0 = none).
        beta: NPO inverse temperature (DPO's beta for method dpo).
        w_forget: weight of the forget term (paper: 0.4).
        w_retain: weight of the retention term (paper: 0.4).
        w_kl: weight of the KL term (paper: 0.2).
        normalize_forget: length-normalise the per-sequence log-likelihood in the NPO term.
        normalize_retain: average the retention cross-entropy per sequence (each retained sentence
            weighs the same) instead of per token (long intersentence candidates dominate).
        loss_region: intrasentence loss region: from_blank, blank_only or sentence.
        kl_region: region of the KL term's unrelated sentences: loss (the loss region) or text (every
            token, the context included: anchors the group words of the contexts to the reference).
        tasks: StereoSet tasks to train on (comma-separated).
        protect_words: comma-separated bias types (gender, race, religion) whose word lists are left out of
            the loss regions of the other types' sentences (gender: debiasing profession cannot move he/she
            directly); empty = off (the paper's losses).
        protect_scope: other (the protected words are cut out of the other bias types' sentences) or all
            (of every type's, the word list's own type included).
        max_length: longest training sequence in tokens.
        pack_sequences: pack each step's sequences into rows with block-diagonal attention instead of
            padding them (same result, a fraction of the compute; turn off for models that reject 4D masks).
        lora_r: LoRA rank.
        lora_alpha: LoRA alpha.
        lora_dropout: LoRA dropout.
        target_modules: comma-separated LoRA target modules (empty: chosen for the architecture).
        control_per_type: control examples per bias type held out of train (at least this many with
            control_by target).
        control_by: hold the control split out by ``target`` (whole StereoSet targets, as the report split's
            targets are unseen) or by ``example`` (the paper's random draw).
        control_signal: soft_ss (soft SS with its standard error, the default), ss (the paper's rule) or gap
            (mean log-probability gap with its standard error); see biasunlearn.methods.control.
        control_every: steps between control readings.
        control_threshold: SS tolerance around 50 for control_signal ss.
        control_z: tolerance in standard errors for control_signal soft_ss and gap.
        control_tau: temperature of control_signal soft_ss (nats of mean token log-probability).
        control_groups: what is read, swapped and sampled separately: type (bias type, the paper's) or
            type_task (bias type and StereoSet task, e.g. gender/intrasentence).
        on_reversed: what happens to a bias type whose control reading is reversed (below 50 beyond the
            tolerance): swap (its forget and retain sets swap roles, the paper's rule) or rest (it is not
            drawn for forget and retain until a reading finds it stereotypical again).
        rest_balanced: a bias type balanced on the control split rests (is not drawn for forget and
            retain) until it leaves the tolerance again.
        type_sampling: how forget and retain items are spread over bias types: size (in proportion to
            each type's pool, the paper's uniform draw), balanced (each type equally often) or adaptive (in
            proportion to the type's distance from 50 on the latest control reading, plus 1 point).
        type_boost: per-type factors on the draw weight that type_sampling gives, e.g. gender=3 (gender
            drawn three times as often; comma-separated TYPE=FACTOR; the types not named keep 1); empty = none.
        positive_share: 0 (off) or the share, within each bias type, of the non-neutral draws that go to
            examples whose stereotype is the more positive sentence of the pair (VADER valence; the rest go
            to those whose stereotype is the more negative one): 0.5 balances the two, so the model cannot
            lower SS just by preferring pleasant sentences; needs vaderSentiment.
        positive_share_types: per-type overrides of positive_share, e.g. gender=0.75 (comma-separated
            TYPE=SHARE; the types not named keep positive_share); empty = none.
        counterfactual_retain: comma-separated bias types with a word list (gender, race, religion) whose
            forget sentences' counterfactuals (group words flipped: mother <-> father) join the retain set, so
            the attribute is unlearned for one group and kept for the other; empty = off (the paper's sets).
        balance_words: comma-separated bias types with a word list (gender, race, religion): every train
            example of the other types with one of their group words joins the train data again with the
            words flipped, so no type's sentences favour one group (an extension outside the paper; see
            biasunlearn.methods.data, "Group-balanced data"); empty = off.
        draw_balance: one bias type with a word list (gender, race, religion): within each bias type's
            forget, retain and pair draws, the sentences naming only one of its groups are drawn equally
            often per group, those naming none or several keep their share (an extension outside the
            paper; see biasunlearn.methods.data.ChunkStream); empty = off (drawn as the pools hold them).
        pair_types: comma-separated bias types whose stereotype / anti-stereotype pairs get the pairwise term
            (an extension outside the paper, DPO's form on the same pair; see
            biasunlearn.methods.losses.pairwise_loss); empty = off (the paper's objective).
        n_pair: pairs per step for the pairwise term.
        w_pair: weight of the pairwise term.
        invariance_types: comma-separated bias types with a word list (gender, race, religion) whose group
            words are flipped for the group-swap invariance term (an extension outside the paper: the
            preference between a train sentence and its counterfactual stays the reference's; see
            biasunlearn.methods.losses.swap_invariance_loss); empty = off (the paper's objective).
        invariance_scope: all (every sentence with a group word) or other (the listed types' own
            stereotypes and anti-stereotypes left out, so their association can still be unlearned).
        n_invariance: sentence / counterfactual pairs per step for the invariance term.
        w_invariance: weight of the invariance term.
        early_stop: stop once every bias type is balanced on the control split.
        control_patience: consecutive control readings on which every type must be balanced before the
            run stops (1 = the first such reading; more guards against a reading balanced by noise).
        keep_best: restore the adapter of the best control ICAT at the end.
        save_steps: steps between checkpoints.
        save_total_limit: most checkpoints kept in out/checkpoints (older ones are deleted); 0 keeps every
            one (e.g. to evaluate the adapter along the run).
        resume: resume from the latest checkpoint in out/checkpoints.
        dtype: model weights dtype (float32, bfloat16, float16, auto).
        train_bf16: bf16 mixed-precision training (on hardware that supports it).
        device: cpu, cuda, cuda:N or auto.
        cache_dir: where built-in and GGUF models are converted.
        trust_remote_code: allow model code from the checkpoint.
        scoring: scoring options of the control readings.
    """

    model: str = DEFAULT_MODEL
    out: str = "runs/train"
    method: str = "biasunlearn"
    preset: str = ""
    data_dir: str = ""
    seed: int = 0
    learning_rate: float = 3e-4
    warmup_steps: int = 0
    max_steps: int = 200
    n_forget: int = 4
    n_retain: int = 28
    n_kl: int = 8
    adversarial_fraction: float = 0.25
    beta: float = 0.1
    w_forget: float = 0.4
    w_retain: float = 0.4
    w_kl: float = 0.2
    normalize_forget: bool = True
    normalize_retain: bool = True
    loss_region: str = "blank_only"
    kl_region: str = "loss"
    tasks: str = "intrasentence,intersentence"
    protect_words: str = ""
    protect_scope: str = "other"
    max_length: int = 128
    pack_sequences: bool = True
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    target_modules: str = ""
    control_per_type: int = 150
    control_by: str = "target"
    control_signal: str = "soft_ss"
    control_every: int = 25
    control_threshold: float = 2.0
    control_z: float = 0.5
    control_tau: float = 0.1
    control_groups: str = "type"
    on_reversed: str = "swap"
    rest_balanced: bool = False
    type_sampling: str = "adaptive"
    type_boost: str = ""
    positive_share: float = 0.0
    positive_share_types: str = ""
    counterfactual_retain: str = ""
    balance_words: str = ""
    draw_balance: str = ""
    pair_types: str = ""
    n_pair: int = 4
    w_pair: float = 0.4
    invariance_types: str = ""
    invariance_scope: str = "all"
    n_invariance: int = 8
    w_invariance: float = 0.4
    early_stop: bool = True
    control_patience: int = 1
    keep_best: bool = True
    save_steps: int = 50
    save_total_limit: int = 2
    resume: bool = False
    dtype: str = "float32"
    train_bf16: bool = False
    device: str = "cpu"
    cache_dir: str = ""
    trust_remote_code: bool = False
    scoring: ScoringConfig = field(default_factory=lambda: ScoringConfig(progress=False))

    def __post_init__(self) -> None:
        method = METHODS.get(self.method)
        if self.preset and self.preset not in PRESETS:
            raise ConfigError(f"--preset: unknown preset {self.preset!r}; available: {', '.join(PRESETS)}")
        if self.protect_words:
            from biasunlearn.methods.data import protected_wordlists

            protected_wordlists(self.protect_words, self.protect_scope)
        if self.counterfactual_retain:
            from biasunlearn.methods.data import counterfactual_wordlists

            counterfactual_wordlists(self.counterfactual_retain)
        if self.balance_words:
            from biasunlearn.methods.data import balance_wordlists

            balance_wordlists(self.balance_words)
        if self.draw_balance:
            from biasunlearn.methods.data import draw_balance_wordlist

            draw_balance_wordlist(self.draw_balance)
        if self.invariance_types:
            from biasunlearn.methods.data import invariance_wordlists

            invariance_wordlists(self.invariance_types)
        if self.invariance_scope not in INVARIANCE_SCOPES:
            raise ConfigError(f"--invariance-scope: expected one of {', '.join(INVARIANCE_SCOPES)}, "
                              f"got {self.invariance_scope!r}")
        if self.loss_region not in REGIONS:
            raise ConfigError(f"--loss-region: expected one of {', '.join(REGIONS)}, got {self.loss_region!r}")
        if self.kl_region not in KL_REGIONS:
            raise ConfigError(f"--kl-region: expected one of {', '.join(KL_REGIONS)}, got {self.kl_region!r}")
        if not 0.0 <= self.positive_share <= 1.0:
            raise ConfigError(f"--positive-share must be in [0, 1] (0 = off), got {self.positive_share}")
        parse_type_shares(self.positive_share_types)
        parse_type_boost(self.type_boost)
        if self.learning_rate <= 0:
            raise ConfigError(f"--learning-rate must be > 0, got {self.learning_rate}")
        if self.max_steps < 1:
            raise ConfigError(f"--max-steps must be >= 1, got {self.max_steps}")
        if self.save_steps < 1:
            raise ConfigError(f"--save-steps must be >= 1, got {self.save_steps}")
        if self.save_total_limit < 0:
            raise ConfigError(f"--save-total-limit must be >= 0 (0 keeps every checkpoint), "
                              f"got {self.save_total_limit}")
        self.pair_type_list()
        if method.engine != "biasunlearn" and (unused := self.chunk_options_set()):
            raise ConfigError(f"{', '.join(unused)}: --method {self.method} does not train on BiasUnlearn's "
                              f"chunks, so {'this option has' if len(unused) == 1 else 'these options have'} "
                              f"no effect on it; leave {'it' if len(unused) == 1 else 'them'} unset")
        if self.counterfactual_retain and not method.retain:
            raise ConfigError(f"--counterfactual-retain: --method {self.method} has no retention term, so the "
                              f"counterfactual sentences would not be trained on; leave it unset")
        if self.kl_region != "loss" and method.engine == "biasunlearn" and not method.kl:
            raise ConfigError(f"--kl-region: --method {self.method} has no KL term, so its region is not used; "
                              f"leave it unset")
        if self.w_pair < 0:
            raise ConfigError(f"--w-pair must be >= 0, got {self.w_pair}")
        if self.w_invariance < 0:
            raise ConfigError(f"--w-invariance must be >= 0, got {self.w_invariance}")
        for name in ("n_forget", "n_retain", "n_kl", "n_pair", "n_invariance"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0")
        ControlConfig(signal=self.control_signal, every=self.control_every, tau=self.control_tau,
                      patience=self.control_patience, on_reversed=self.on_reversed)
        if self.type_sampling not in TYPE_SAMPLING:
            raise ConfigError(f"--type-sampling: expected one of {', '.join(TYPE_SAMPLING)}, "
                              f"got {self.type_sampling!r}")
        if self.control_groups not in GROUPINGS:
            raise ConfigError(f"--control-groups: expected one of {', '.join(GROUPINGS)}, got {self.control_groups!r}")
        if self.control_by not in CONTROL_BY:
            raise ConfigError(f"--control-by: expected one of {', '.join(CONTROL_BY)}, got {self.control_by!r}")

    def chunk_options_set(self) -> list[str]:
        """The flags, set away from their off value, that only BiasUnlearn's chunk stream reads (the
        objective's terms and its ablations); the other engines (DPO, BiasEdit) would ignore them."""
        opt_in = {"positive_share": "--positive-share", "positive_share_types": "--positive-share-types",
                  "type_boost": "--type-boost", "counterfactual_retain": "--counterfactual-retain",
                  "protect_words": "--protect-words", "balance_words": "--balance-words",
                  "draw_balance": "--draw-balance",
                  "pair_types": "--pair-types",
                  "invariance_types": "--invariance-types"}
        flags = [flag for name, flag in opt_in.items() if getattr(self, name)]
        return flags + (["--kl-region"] if self.kl_region != "loss" else [])

    def pair_type_list(self) -> tuple[str, ...]:
        """The bias types of ``--pair-types`` (empty: the pairwise term is off)."""
        types = tuple(t.strip() for t in self.pair_types.split(",") if t.strip())
        bad = [t for t in types if t not in BIAS_TYPES]
        if bad:
            raise ConfigError(f"--pair-types: unknown bias type(s) {', '.join(bad)}; expected some of "
                              f"{', '.join(BIAS_TYPES)}")
        return types

    def task_list(self) -> tuple[str, ...]:
        tasks = tuple(t.strip() for t in self.tasks.split(",") if t.strip())
        bad = [t for t in tasks if t not in ("intrasentence", "intersentence")]
        if bad or not tasks:
            raise ConfigError(f"--tasks: expected intrasentence and/or intersentence, got {self.tasks!r}")
        return tasks


def with_preset(values: dict[str, Any]) -> dict[str, Any]:
    """Apply a preset's defaults under explicitly given values."""
    preset = values.get("preset") or ""
    if preset and preset not in PRESETS:
        raise ConfigError(f"--preset: unknown preset {preset!r}; available: {', '.join(PRESETS)}")
    return {**PRESETS.get(preset, {}), **values}


def _make_peft(model, cfg: TrainConfig):
    from peft import LoraConfig, get_peft_model

    targets = [t.strip() for t in cfg.target_modules.split(",") if t.strip()] or lora_target_modules(model)
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM", bias="none")
    return get_peft_model(model, lcfg), targets


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train an adapter; returns the provenance record (also written to ``out/adapter/provenance.json``)."""
    from transformers import TrainingArguments, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    from biasunlearn.methods.trainer import (
        BiasUnlearnTrainer,
        JsonlLogCallback,
        load_checkpoint_state,
        trim_train_log,
    )

    method = METHODS.get(cfg.method)
    tasks = cfg.task_list()
    out = Path(cfg.out)
    set_seed(cfg.seed)
    data_dir = resolve_data_dir(cfg.data_dir or None)
    splits = make_splits(data_dir, control_per_type=cfg.control_per_type, seed=cfg.seed,
                         control_by=cfg.control_by)
    model, tok, resolved = load_model_and_tokenizer(
        cfg.model, dtype=cfg.dtype, device=cfg.device, cache_dir=Path(cfg.cache_dir) if cfg.cache_dir else None,
        trust_remote_code=cfg.trust_remote_code,
    )
    info = model_info(model, tok, resolved)
    if method.engine == "biasedit":
        return _train_biasedit(cfg, model, tok, info, splits, data_dir, out)
    model, targets = _make_peft(model, cfg)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("LoRA r=%d on %s: %d trainable parameters", cfg.lora_r, ",".join(targets), n_trainable)

    shares = parse_type_shares(cfg.positive_share_types)
    train_examples = group_balanced(splits.train, cfg.balance_words, [*splits.control, *splits.report])
    if cfg.balance_words:  # make_splits already checked splits.train; prove the added copies disjoint too
        check_no_leakage(train_examples, {"report": splits.report, "control": splits.control})
    pools = build_pools(train_examples, cfg.loss_region, tasks, cfg.control_groups, cfg.protect_words,
                        cfg.protect_scope,
                        sentiment=cfg.positive_share > 0 or any(shares.values()),
                        counterfactual=cfg.counterfactual_retain, kl_region=cfg.kl_region,
                        held_out=[*splits.control, *splits.report])
    swap = SwapState()
    history: list[dict[str, Any]] = []
    ckpt_dir = out / "checkpoints"
    resume_from = None
    if cfg.resume:
        resume_from = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
        if resume_from is None:
            raise ConfigError(f"--resume: no checkpoint found in {ckpt_dir}")
        loaded, history, saved = load_checkpoint_state(Path(resume_from))
        swap.swapped, swap.resting, swap.distance = loaded.swapped, loaded.resting, loaded.distance
        log.info("resuming from %s (swapped: %s, resting: %s)", resume_from, swap.swapped, swap.resting)
    elif (out / "adapter").exists():
        raise ConfigError(f"--out: {out / 'adapter'} already exists; choose another --out or remove it")

    start_id = resolve_start_token_id(tok, cfg.scoring.start_token)
    adv = cfg.adversarial_fraction if method.adversarial else 0.0
    n_retain = (cfg.n_retain + (cfg.n_forget if method.forget == "none" else 0)) if method.retain else 0
    pair_types = cfg.pair_type_list() if cfg.w_pair > 0 else ()  # --w-pair 0: no pairs drawn
    stream = ChunkStream(pools, tok, start_id, n_forget=cfg.n_forget if method.forget != "none" else 0,
                         n_retain=n_retain, n_kl=cfg.n_kl if method.kl else 0, retain_set=method.retain_set,
                         adversarial_fraction=adv, seed=cfg.seed, swap_state=swap, max_length=cfg.max_length,
                         type_sampling=cfg.type_sampling, positive_share=cfg.positive_share,
                         positive_share_types=shares, type_boost=parse_type_boost(cfg.type_boost),
                         pair_types=pair_types, n_pair=cfg.n_pair,
                         invariance=invariance_pairs(splits.train, cfg.invariance_types, tasks,
                                                     cfg.invariance_scope,
                                                     held_out=[*splits.control, *splits.report])
                         if cfg.w_invariance > 0 else (), n_invariance=cfg.n_invariance,
                         draw_balance=draw_balance_wordlist(cfg.draw_balance))
    ccfg = ControlConfig(signal=cfg.control_signal, every=cfg.control_every, threshold=cfg.control_threshold,
                         z=cfg.control_z, tau=cfg.control_tau, grouping=cfg.control_groups,
                         swapping=method.swapping, on_reversed=cfg.on_reversed,
                         rest_balanced=cfg.rest_balanced, early_stop=cfg.early_stop, keep_best=cfg.keep_best,
                         patience=cfg.control_patience)
    control_cb = ControlCallback(tok, splits.control, ccfg, swap, cfg.scoring, history)
    prior_seconds = 0.0
    if resume_from:
        control_cb.load_best(Path(resume_from), saved.get("best"))
        prior_seconds = float(saved.get("train_seconds", 0.0))
    t0 = time.time()
    args_kwargs = dict(
        output_dir=str(ckpt_dir), max_steps=cfg.max_steps, learning_rate=cfg.learning_rate,
        lr_scheduler_type="linear", warmup_steps=cfg.warmup_steps, optim="adamw_torch",
        per_device_train_batch_size=1, gradient_accumulation_steps=1, logging_steps=1,
        save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit or None, report_to=[],
        remove_unused_columns=False, seed=cfg.seed, data_seed=cfg.seed, dataloader_num_workers=0,
        use_cpu=cfg.device == "cpu", bf16=cfg.train_bf16, disable_tqdm=False,
        accelerator_config={"dispatch_batches": False},
    )
    callbacks = [JsonlLogCallback(out / "train_log.jsonl"), control_cb,
                 _StateSaver(swap, control_cb, lambda: prior_seconds + time.time() - t0)]
    if method.engine == "dpo":
        from biasunlearn.baselines.dpo import build_dpo_trainer

        trainer = build_dpo_trainer(model, tok, splits.train, cfg, args_kwargs, callbacks)
    else:
        trainer = BiasUnlearnTrainer(
            model=model, args=TrainingArguments(**args_kwargs), train_dataset=stream,
            data_collator=partial(collate_chunk, pad_id=tok.pad_token_id if tok.pad_token_id is not None
                                  else start_id, pack=cfg.pack_sequences),
            method=method,
            weights=ObjectiveWeights(cfg.w_forget, cfg.w_retain, cfg.w_kl, cfg.beta, cfg.normalize_forget,
                                     cfg.normalize_retain, cfg.w_pair if pair_types else 0.0,
                                     cfg.w_invariance if cfg.invariance_types else 0.0),
            callbacks=callbacks,
        )
    if resume_from and trainer.is_world_process_zero():
        resumed = Path(resume_from).name
        dropped = trim_train_log(out / "train_log.jsonl", int(resumed.split("-")[-1]))
        if dropped:
            log.info("train_log.jsonl: dropped %d record(s) logged after %s, which are trained again",
                     dropped, resumed)
    trainer.train(resume_from_checkpoint=resume_from)
    train_s = prior_seconds + time.time() - t0  # up to the checkpoint resumed from, then this process
    last = control_cb.history[-1] if control_cb.history else None
    if last is None or last["step"] != trainer.state.global_step:
        control_cb._read(trainer.model, trainer.state.global_step, trainer.control)
    best = control_cb.restore_best(trainer.model)

    files = [STEREOSET_TEST, STEREOSET_DEV]
    record = {
        "biasunlearn_version": package_versions(("biasunlearn",))["biasunlearn"],
        "method": method.name,
        "base_model": info,
        "lora": {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout, "target_modules": targets,
                 "trainable_parameters": n_trainable},
        "config": asdict(cfg),
        "data": dataset_checksums(data_dir, files),
        "splits": {"seed": cfg.seed, "control_by": splits.control_by, "control_targets": splits.control_targets,
                   "counts": splits.counts(), "dropped_for_leakage": splits.dropped_for_leakage},
        "packages": package_versions(),
        "steps": trainer.state.global_step,
        "world_size": trainer.args.world_size,
        "train_seconds": round(train_s, 1),
        "selected": best or {"step": trainer.state.global_step},
        "final_swaps": dict(swap.swapped),
        "final_resting": dict(swap.resting),
        "control_history": control_cb.history,
    }
    if trainer.is_world_process_zero():
        with atomic_directory(out / "adapter") as tmp:
            # only the trained adapter: trl's DPOTrainer adds a frozen copy of the initial one ("ref")
            trainer.model.save_pretrained(str(tmp), safe_serialization=True,
                                          selected_adapters=[getattr(trainer.model, "active_adapter", "default")])
            atomic_write_json(tmp / "provenance.json", record)
        log.info("adapter written to %s", out / "adapter")
    return record


def _train_biasedit(cfg: TrainConfig, model, tok, info: dict[str, Any], splits, data_dir, out: Path) -> dict[str, Any]:
    """BiasEdit: train the editor networks, write their weight deltas (``OUT/adapter/weight_deltas.safetensors``,
    applied by ``eval --adapter``) with the same provenance record as the other methods."""
    from biasunlearn.baselines.biasedit import save_deltas, train_biasedit

    if (out / "adapter").exists():
        raise ConfigError(f"--out: {out / 'adapter'} already exists; choose another --out or remove it")
    start_id = resolve_start_token_id(tok, cfg.scoring.start_token)
    t0 = time.time()
    n_layers = int(getattr(model.config, "num_hidden_layers", 3) or 3)
    layers = tuple(range(-min(3, n_layers), 0))  # the last three blocks (the authors' "last123")
    deltas, be_info = train_biasedit(model, tok, [e for e in splits.train if e.task in cfg.task_list()],
                                     layers=layers, steps=cfg.max_steps,
                                     batch_size=max(1, (cfg.n_forget + cfg.n_retain) // 2),
                                     seed=cfg.seed, max_length=cfg.max_length, start_id=start_id)
    record = {
        "biasunlearn_version": package_versions(("biasunlearn",))["biasunlearn"],
        "method": "biasedit",
        "base_model": info,
        "config": asdict(cfg),
        "biasedit": {k: v for k, v in be_info.items() if k != "log"},
        "data": dataset_checksums(data_dir, [STEREOSET_TEST, STEREOSET_DEV]),
        "splits": {"seed": cfg.seed, "counts": splits.counts(), "dropped_for_leakage": splits.dropped_for_leakage},
        "packages": package_versions(),
        "steps": cfg.max_steps,
        "train_seconds": round(time.time() - t0, 1),
        "selected": {"step": cfg.max_steps},
        "control_history": [],
    }
    save_deltas(deltas, out / "adapter", record)
    atomic_write_json(out / "biasedit_log.json", be_info.get("log", []))
    log.info("BiasEdit weight deltas written to %s", out / "adapter")
    return record


class _StateSaver(TrainerCallback):
    """Saves into every checkpoint (for ``--resume``) the swap state, the control history, the best reading
    with its adapter weights, and the seconds trained so far."""

    def __init__(self, swap: SwapState, control_cb: ControlCallback, seconds: Callable[[], float]) -> None:
        self.swap, self.control_cb, self.seconds = swap, control_cb, seconds

    def on_save(self, args, state, control, **kwargs):
        from biasunlearn.methods.trainer import save_swap_state

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir() and state.is_world_process_zero:
            best = self.control_cb.save_best(folder)
            save_swap_state(folder, self.swap, self.control_cb.history,
                            {"best": best, "train_seconds": round(self.seconds(), 1)})


def read_train_log(out: str | Path) -> list[dict[str, Any]]:
    p = Path(out) / "train_log.jsonl"
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
