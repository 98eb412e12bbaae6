"""Derive a sibling variant of a model by fine-tuning all its weights on text unrelated to social bias.

Used to show debiasing-weight transfer (paper §4.3): an adapter trained on the built-in model is loaded
into this variant. The text is ``text/finetune.txt`` (SQLite documentation, public domain), written by
``scripts/prepare_text.py``. The variant is saved as a plain safetensors checkpoint with its tokenizer
and a ``sibling.json`` record (base model, text sha256, steps, learning rate, training loss).

    python scripts/make_sibling.py --text DATA/text/finetune.txt --out runs/sibling --steps 200
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import time
from pathlib import Path

import torch

log = logging.getLogger("make_sibling")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--text", required=True, help="UTF-8 text, one paragraph per line")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=8, help="paragraphs per step")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--learning-rate", type=float, default=2e-5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    from biasunlearn.models import load_model_and_tokenizer, model_info
    from biasunlearn.utils import atomic_directory

    out = Path(args.out)
    if (out / "model").exists():
        raise SystemExit(f"--out: {out / 'model'} already exists")
    text_path = Path(args.text)
    paragraphs = [p for p in text_path.read_text(encoding="utf-8").splitlines() if p.strip()]
    if not paragraphs:
        raise SystemExit(f"--text: {text_path} has no paragraphs")
    random.Random(args.seed).shuffle(paragraphs)
    torch.manual_seed(args.seed)
    model, tok, resolved = load_model_and_tokenizer(args.model)
    base_info = model_info(model, tok, resolved)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / args.steps)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    losses, t0 = [], time.time()
    for step in range(args.steps):
        batch = [paragraphs[(step * args.batch + i) % len(paragraphs)] for i in range(args.batch)]
        enc = tok(batch, return_tensors="pt", padding=True, truncation=True, max_length=args.max_length,
                  add_special_tokens=False)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        enc["input_ids"] = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, pad)
        loss = model(**enc, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
        if step % 20 == 0 or step == args.steps - 1:
            log.info("step %d loss %.3f (%.1f s)", step, losses[-1], time.time() - t0)
    model.eval()
    record = {
        "base_model": base_info, "text": str(text_path),
        "text_sha256": hashlib.sha256(text_path.read_bytes()).hexdigest(), "paragraphs": len(paragraphs),
        "steps": args.steps, "batch": args.batch, "max_length": args.max_length,
        "learning_rate": args.learning_rate, "seed": args.seed, "seconds": round(time.time() - t0, 1),
        "loss_first_20": sum(losses[:20]) / len(losses[:20]), "loss_last_20": sum(losses[-20:]) / len(losses[-20:]),
    }
    with atomic_directory(out / "model") as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        (tmp / "sibling.json").write_text(json.dumps(record, indent=2))
    log.info("wrote %s (loss %.3f -> %.3f)", out / "model", record["loss_first_20"], record["loss_last_20"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
