"""Seconds per step and peak memory: a BiasUnlearn step vs a plain peft LoRA cross-entropy step.

Both run on the same tokens (one chunk of forget + retain + unrelated sequences from the train split,
packed into rows the same way) and the same LoRA set-up; each variant runs in its own process so that
peak memory is its own.
Peak memory is reported as the peak resident set size and as the increase over the RSS after loading.
``--pair-types gender --n-pair 8 --w-pair 0.8`` adds the main job's pairwise term (8 stereotype /
anti-stereotype pairs a step, 16 more sequences through the policy and the reference); the plain step then
runs its cross-entropy on those sequences too.

    python benchmarks/train_speed.py --steps 6 --out results/train_speed.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(variant: str, model_spec: str, steps: int, n_forget: int, n_retain: int, n_kl: int,
           pair_types: tuple[str, ...] = (), n_pair: int = 0, w_pair: float = 0.0) -> dict:
    import torch

    from biasunlearn.data.paths import resolve_data_dir
    from biasunlearn.data.splits import make_splits
    from biasunlearn.methods.data import ChunkStream, build_pools, collate_chunk
    from biasunlearn.methods.losses import retention_loss
    from biasunlearn.methods.objective import METHODS, ObjectiveWeights
    from biasunlearn.methods.trainer import chunk_loss
    from biasunlearn.models import load_model_and_tokenizer
    from biasunlearn.scoring import resolve_start_token_id
    from biasunlearn.train import TrainConfig, _make_peft

    torch.manual_seed(0)
    model, tok, _ = load_model_and_tokenizer(model_spec)
    model, _ = _make_peft(model, TrainConfig(model=model_spec))
    model.train()
    splits = make_splits(resolve_data_dir(None))
    stream = ChunkStream(build_pools(splits.train), tok, resolve_start_token_id(tok), n_forget=n_forget,
                         n_retain=n_retain, n_kl=n_kl, seed=0, pair_types=pair_types, n_pair=n_pair)
    it = iter(stream)
    batches = [collate_chunk([next(it)], tok.pad_token_id) for _ in range(steps + 1)]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    rss_loaded = _rss_mb()
    if variant == "biasunlearn":
        method, weights = METHODS.get("biasunlearn"), ObjectiveWeights(pair=w_pair)

        def loss_fn(b):
            return chunk_loss(model, b, method, weights)["loss"]
    else:
        def loss_fn(b):
            # Plain LoRA cross-entropy on every sequence of the chunk, same tokens, same masks.
            pk = b["packed"]  # the same packed rows the BiasUnlearn step runs on
            logits = pk.unpack(model(**pk.model_inputs()).logits)
            return retention_loss(logits, b["input_ids"], b["loss_mask"])

    times = []
    for i, b in enumerate(batches):
        t = time.perf_counter()
        loss = loss_fn(b)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i > 0:  # the first step warms up
            times.append(time.perf_counter() - t)
    return {"variant": variant, "seconds_per_step": sum(times) / len(times), "steps": len(times),
            "peak_rss_mb": _rss_mb(), "rss_after_load_mb": rss_loaded,
            "sequences_per_step": int(batches[0]["input_ids"].shape[0]),
            "tokens_per_step": int(batches[0]["attention_mask"].sum())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--n-forget", type=int, default=4)
    ap.add_argument("--n-retain", type=int, default=28)
    ap.add_argument("--n-kl", type=int, default=8)
    ap.add_argument("--pair-types", default="", help="bias types of the pairwise term (e.g. gender); empty: off")
    ap.add_argument("--n-pair", type=int, default=8)
    ap.add_argument("--w-pair", type=float, default=0.8)
    ap.add_argument("--out", default="")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        pair_types = tuple(t for t in args.pair_types.split(",") if t)
        print(json.dumps(worker(args.worker, args.model, args.steps, args.n_forget, args.n_retain, args.n_kl,
                                pair_types, args.n_pair, args.w_pair)))
        return 0
    res = {}
    for variant in ("plain_lora_ce", "biasunlearn"):
        cmd = [sys.executable, __file__, "--worker", variant, "--model", args.model, "--steps", str(args.steps),
               "--n-forget", str(args.n_forget), "--n-retain", str(args.n_retain), "--n-kl", str(args.n_kl),
               "--pair-types", args.pair_types, "--n-pair", str(args.n_pair), "--w-pair", str(args.w_pair)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        res[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    p, b = res["plain_lora_ce"], res["biasunlearn"]
    out = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "results": res,
        "ratio_seconds_per_step": b["seconds_per_step"] / p["seconds_per_step"],
        "ratio_peak_rss": b["peak_rss_mb"] / p["peak_rss_mb"],
        "ratio_peak_rss_increase": (b["peak_rss_mb"] - b["rss_after_load_mb"])
        / max(1e-9, p["peak_rss_mb"] - p["rss_after_load_mb"]),
    }
    for v, r in res.items():
        print(f"{v:<15} {r['seconds_per_step']:.2f} s/step  peak RSS {r['peak_rss_mb']:.0f} MB "
              f"(+{r['peak_rss_mb'] - r['rss_after_load_mb']:.0f} MB over the loaded model)")
    print(f"ratio BiasUnlearn/plain: time {out['ratio_seconds_per_step']:.2f}x, peak RSS {out['ratio_peak_rss']:.2f}x, "
          f"peak RSS increase {out['ratio_peak_rss_increase']:.2f}x")
    if args.out:
        from biasunlearn.utils import atomic_write_json

        atomic_write_json(Path(args.out), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
