"""Where an adapter moves CrowS-Pairs gender: the log-probability change of each gendered word.

For every CrowS-Pairs gender pair whose one sentence carries the female words and the other the male ones
(the word lists of ``crows_gender_words.py``), both sentences are scored token by token with the adapter
disabled (the reference) and enabled. A token is *modified* when it overlaps the words the two sentences
do not share (``biasunlearn.data.crows_pairs.modified_spans``, as the unmodified-token score uses them).
Printed: the mean change (after - before, nats) of the female sentence's log-likelihood minus the male
sentence's, split into the modified tokens and the rest; the mean change of each side's modified tokens;
and, per modified token text seen at least ``--min-count`` times, its mean change. A general shift toward
one group's words shows as the modified part; a change in what follows the words as the rest.

    python scripts/crows_gender_tokens.py --model smollm2-135m-instruct --adapter results/main-smollm2/adapter \
        --data ../shared/data/crows_pairs/crows_pairs_anonymized.csv
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crows_gender_words import FEMALE, MALE, _words

from biasunlearn.data.crows_pairs import load_crows_pairs, modified_spans
from biasunlearn.methods.losses import token_logprobs as sequence_token_logprobs


def token_logprobs(model, tok, start_id: int, text: str,
                   spans) -> tuple[dict[str, torch.Tensor], list[bool], list[str]]:
    """Per-token log-probabilities of ``text`` (after the start token) with the adapter off and on, whether
    each token overlaps one of ``spans``, and each token's text."""
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
    ids = torch.tensor([[start_id, *enc["input_ids"]]])
    out = {}
    for name, adapter_off in (("before", model.disable_adapter), ("after", nullcontext)):
        with torch.no_grad(), adapter_off():
            out[name] = sequence_token_logprobs(model(ids).logits, ids)[0]
    offsets = enc["offset_mapping"]
    modified = [any(s < e2 and s2 < e for s2, e2 in spans) for s, e in offsets]
    return out, modified, [text[s:e].strip().lower() for s, e in offsets]


def decompose(model, tok, start_id: int, pairs) -> tuple[int, dict[str, float], dict[str, list[float]]]:
    """(pairs used, mean shifts, per-word changes) over the female / male gender pairs of ``pairs``."""
    fem, mal = _words(FEMALE), _words(MALE)
    sums: dict[str, float] = defaultdict(float)
    per_word: dict[str, list[float]] = defaultdict(list)
    n = 0
    for p in pairs:
        if p.bias_type != "gender":
            continue
        if fem.search(p.sent_more) and mal.search(p.sent_less):
            f_text, m_text = p.sent_more, p.sent_less
            f_spans, m_spans = modified_spans(p.sent_more, p.sent_less)
        elif mal.search(p.sent_more) and fem.search(p.sent_less):
            f_text, m_text = p.sent_less, p.sent_more
            m_spans, f_spans = modified_spans(p.sent_more, p.sent_less)
        else:
            continue
        n += 1
        for side, text, spans, sign in (("female", f_text, f_spans, 1.0), ("male", m_text, m_spans, -1.0)):
            lp, modified, words = token_logprobs(model, tok, start_id, text, spans)
            delta = lp["after"] - lp["before"]
            mask = torch.tensor(modified, dtype=torch.bool)
            mod, rest = delta[mask].sum().item(), delta[~mask].sum().item()
            sums["modified"] += sign * mod
            sums["unmodified"] += sign * rest
            sums[f"{side} modified"] += mod
            for d, m, w in zip(delta.tolist(), modified, words, strict=True):
                if m:
                    per_word[f"{side}: {w}"].append(d)
    return n, {k: v / max(n, 1) for k, v in sums.items()}, per_word


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="base model: built-in name, local folder or hub id")
    ap.add_argument("--adapter", required=True, type=Path, help="peft adapter folder trained on --model")
    ap.add_argument("--data", required=True, type=Path, help="crows_pairs_anonymized.csv")
    ap.add_argument("--min-count", type=int, default=5, help="list words modified in at least this many pairs")
    args = ap.parse_args(argv)
    if not (args.adapter / "adapter_config.json").is_file():
        sys.exit(f"--adapter: {args.adapter} has no adapter_config.json (not a peft adapter folder)")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from biasunlearn.models import resolve_model
    from biasunlearn.scoring import resolve_start_token_id

    path = resolve_model(args.model).path
    tok = AutoTokenizer.from_pretrained(path)
    if not tok.is_fast:
        sys.exit(f"--model: {args.model} has no fast tokenizer (character offsets are needed)")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path, use_safetensors=True),
                                      str(args.adapter)).eval()
    n, shifts, per_word = decompose(model, tok, resolve_start_token_id(tok), load_crows_pairs(args.data))
    if not n:
        sys.exit(f"--data: {args.data} has no gender pair with female words on one side and male on the other")
    print(f"{n} gender pairs with female words on one side and male words on the other; mean change after - "
          "before, nats\n")
    print("| part | mean change |\n|---|---:|")
    print(f"| female - male sentence, modified tokens | {shifts['modified']:+.3f} |")
    print(f"| female - male sentence, unmodified tokens | {shifts['unmodified']:+.3f} |")
    print(f"| female sentence, modified tokens | {shifts['female modified']:+.3f} |")
    print(f"| male sentence, modified tokens | {shifts['male modified']:+.3f} |\n")
    print("| modified token | pairs | mean change |\n|---|---:|---:|")
    rows = sorted(((sum(v) / len(v), len(v), w) for w, v in per_word.items() if len(v) >= args.min_count),
                  reverse=True)
    for mean, count, word in rows:
        print(f"| {word} | {count} | {mean:+.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
