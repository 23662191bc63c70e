"""CFIC decoding paths the benchmark compares with the product's, over a :class:`CficExtractor`.

* ``free_branches``: start sentences from unconstrained greedy prefixes, fuzzy-matched to the
  sentence starts (what the trie constraint saves);
* ``stepwise_decode``: the span end found token by token along the document until a stop token
  beats the document's next token (what skip decoding saves); with ``force_until`` it feeds
  exactly the tokens of a given span, to time token-by-token decoding of the same spans;
* ``generate_free``: free generation of the evidence from the cached prompt (the no-constraint
  baseline; ``bench.cfic`` fuzzy-matches it back to sentences);
* ``extract_ablation``: a whole extraction with either ablation switched in.

Each branches from the same :class:`Prefilled` prompt as the product path and never consumes it.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence

import torch

from longrag.retrieval.cfic import Branch, CficExtractor, CficOptions, EvidenceSpan, Prefilled, SpanEnd, merge_spans


def fuzzy_sentence(guess: str, sentences: Sequence[str], *, prefix: bool = False) -> int | None:
    """Index of the sentence most similar to ``guess`` (its start when ``prefix``)."""
    guess = guess.strip()
    if not guess or not sentences:
        return None
    best, best_score = None, -1.0
    for i, s in enumerate(sentences):
        ref = s[: len(guess) + 8] if prefix else s
        score = difflib.SequenceMatcher(None, guess.lower(), ref.lower(), autojunk=False).ratio()
        if score > best_score:
            best, best_score = i, score
    return best


def free_branches(ex: CficExtractor, pre: Prefilled, opt: CficOptions, *, prefix_tokens: int = 12) -> list[Branch]:
    """Start sentences from unconstrained greedy prefixes of ``prefix_tokens``, fuzzy-matched."""
    logp0 = torch.log_softmax(pre.logits, -1)
    firsts = torch.topk(logp0, opt.top_k * 2).indices.tolist()
    texts = [pre.sentence_text(i) for i in range(len(pre.sentences))]
    found: list[Branch] = []
    seen: set[int] = set()
    for first in firsts:
        if len(found) >= opt.top_k:
            break
        if first in ex.stops:
            continue
        path = [first]
        score = float(logp0[first])
        for _ in range(prefix_tokens - 1):
            logits = torch.log_softmax(ex.step(pre, path), -1)
            t = int(logits.argmax())
            if t in ex.stops:
                break
            path.append(t)
            score += float(logits[t])
        guess = ex.tokenizer.decode(path, skip_special_tokens=True).strip()
        sentence = fuzzy_sentence(guess, texts, prefix=True)
        if sentence is None or sentence in seen:
            continue
        seen.add(sentence)
        found.append((sentence, ex.variant_for(pre, sentence, ()), score))
    return found


@torch.inference_mode()
def stepwise_decode(ex: CficExtractor, pre: Prefilled, branch: Branch, opt: CficOptions, *,
                    force_until: int | None = None) -> SpanEnd:
    """Token by token along the document from a start sentence.

    At each token the model chooses between the document's next token and a stop token; the
    span ends at the sentence holding the last fed token. With ``force_until`` (a visible
    sentence index) it feeds exactly the tokens up to that sentence's end (the span skip
    decoding found, one token at a time).
    """
    first, variant, _ = branch
    ends = ex.end_candidates(pre, first, opt)
    if force_until is not None:
        ends = [e for e in ends if e <= force_until] or [first]
    ids, positions = ex.span_tokens(pre, variant, ends)
    boundary = dict(zip(positions, ends))
    cache = ex.branch_cache(pre, 1)
    last, p_stop = first, 0.0
    for t, tok in enumerate(ids):
        out = ex.model(input_ids=torch.tensor([[tok]], device=ex.device), cache=cache, use_cache=True)
        logp = torch.log_softmax(out.logits[0, -1].float(), -1)
        if t in boundary:
            last = boundary[t]
        if force_until is not None:
            continue
        pe = float(ex.p_end(logp))
        nxt = ids[t + 1] if t + 1 < len(ids) else None
        if nxt is None or pe > math.exp(float(logp[nxt])):
            # snap to the sentence holding token t
            last = next((e for p, e in zip(positions, ends) if p >= t), ends[-1])
            p_stop = pe
            break
    del cache
    return first, last, p_stop


@torch.inference_mode()
def generate_free(ex: CficExtractor, pre: Prefilled, max_new_tokens: int = 64) -> str:
    """Unconstrained greedy decoding of the evidence from the cached prompt."""
    cache = ex.branch_cache(pre, 1)
    logits = pre.logits
    out: list[int] = []
    for _ in range(max_new_tokens):
        t = int(logits.argmax())
        if t in ex.stops:
            break
        out.append(t)
        logits = ex.model(input_ids=torch.tensor([[t]], device=ex.device), cache=cache,
                          use_cache=True).logits[0, -1].float()
    del cache
    return ex.tokenizer.decode(out, skip_special_tokens=True).strip()


def extract_ablation(ex: CficExtractor, pre: Prefilled, opt: CficOptions, *, constrained: bool = True,
                     skip: bool = True, prefix_tokens: int = 12) -> list[EvidenceSpan]:
    """The merged spans of an extraction with the trie constraint and/or skip decoding replaced
    by :func:`free_branches` / :func:`stepwise_decode` (no no-evidence gate)."""
    branches = ex.start_branches(pre, opt) if constrained else free_branches(ex, pre, opt, prefix_tokens=prefix_tokens)
    ends = ex.skip_decode(pre, branches, opt) if skip else [stepwise_decode(ex, pre, b, opt) for b in branches]
    spans = [ex.span(pre, first, last, score) for (first, last, _), (_, _, score) in zip(ends, branches)]
    return merge_spans(spans, pre.text)
