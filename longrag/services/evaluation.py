"""``longrag eval``: every answer mode through the product path, on needle-in-a-haystack documents.

What a user gets, measured the way a user asks: each document is ingested into a fresh,
temporary store (never the user's), then every question goes through ``QAPipeline.ask`` with the
mode's default options, exactly as ``longrag ask --mode M`` would send it.

1. **Documents.** A haystack (public-domain text: the opening of *Frankenstein*, shipped with
   the package, or ``--haystack``) is cut to each target length in decoder tokens, and the
   needles (facts of our own that the haystack does not hold: numbers, names, places) are put
   in as their own paragraphs at evenly spread depths from 0.05 to 0.95.
2. **Questions.** One per needle, asked over its document in every mode.
3. **Measures** per mode and length: answer accuracy (the needle's answer occurs in the
   answer), evidence hit (a cited span overlaps the needle), TTFT, decode tokens/s, KV bytes held
   against a full cache (SentenceKV), RAPID's acceptance rate, and any fallback a mode reports.
"""

from __future__ import annotations

import logging
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HAYSTACK = Path(__file__).with_name("data") / "haystack_frankenstein.txt"
LENGTHS = (2048, 4096, 8192, 16384)


@dataclass(frozen=True, slots=True)
class Needle:
    fact: str  # the sentence put into the haystack
    question: str
    answer: str  # what a right answer contains (case-insensitive)


NEEDLES: tuple[Needle, ...] = (
    Needle("The spare key of the Alvey lighthouse is kept in a tin marked with the number 4471.",
           "What number is marked on the tin that holds the spare key of the Alvey lighthouse?", "4471"),
    Needle("The ferry to Skarholm island was captained for thirty years by a woman named Ingrid Halvorsen.",
           "Who captained the ferry to Skarholm island?", "Ingrid Halvorsen"),
    Needle("The Brightwater glass company moved its furnaces to the town of Cullenford in the spring.",
           "To which town did the Brightwater glass company move its furnaces?", "Cullenford"),
    Needle("The clockmaker Osric Pell charged exactly 312 shillings for the great tower clock.",
           "How many shillings did Osric Pell charge for the great tower clock?", "312"),
    Needle("The botanist's rarest orchid was named Marisol after her youngest niece.",
           "What was the botanist's rarest orchid named?", "Marisol"),
    Needle("The winter caravan always rested at the oasis of Tamerzit before crossing the salt flats.",
           "At which oasis did the winter caravan rest before crossing the salt flats?", "Tamerzit"),
    Needle("The archive's oldest map was drawn in the year 1587 by a monk of the abbey of Ruthven.",
           "In what year was the archive's oldest map drawn?", "1587"),
    Needle("The miller's prize horse, a grey mare called Juniper, won the county race twice.",
           "What was the name of the miller's prize horse?", "Juniper"),
    Needle("The secret society of engravers met every month in the cellar of the Blue Heron inn.",
           "Where did the secret society of engravers meet every month?", "Blue Heron"),
    Needle("The expedition's cook, Bartholomew Quist, carried 46 jars of pickled plums.",
           "How many jars of pickled plums did the expedition's cook carry?", "46"),
    Needle("The violin maker sold his finest instrument to a merchant from the port of Valdemora.",
           "From which port was the merchant who bought the violin maker's finest instrument?", "Valdemora"),
    Needle("The lost letters were finally found by a schoolteacher named Edwina Thorne.",
           "Who finally found the lost letters?", "Edwina Thorne"),
)

# mode label -> (mode, kv or None): what `longrag ask --mode M [--kv K]` sends
MODES: dict[str, tuple[str, str | None]] = {
    "plain": ("plain", None),
    "full": ("full", "full"),
    "full+sentencekv": ("full", "sentencekv"),
    "rapid": ("rapid", None),
    "cfic": ("cfic", None),
    "refrag": ("refrag", None),
}


@dataclass
class Row:
    mode: str
    length: int
    needle: int
    depth: float
    answer: str
    right: bool
    evidence_hit: bool
    ttft_ms: float
    tokens_per_s: float
    total_ms: float
    kv_fraction: float | None  # KV bytes held / a full cache's (None: the mode keeps no such figure)
    acceptance: float | None  # RAPID's draft acceptance rate
    fallback: str | None  # a mode's own note that it served the request another way
    error: str | None = None


@dataclass
class EvalReport:
    decoder: str
    lengths: list[int]
    modes: list[str]
    rows: list[Row] = field(default_factory=list)

    def summary(self) -> list[dict[str, Any]]:
        out = []
        for mode in self.modes:
            for length in self.lengths:
                rows = [r for r in self.rows if r.mode == mode and r.length == length]
                ok = [r for r in rows if r.error is None]
                if not rows:
                    continue

                def mean(values: Sequence[float | None]) -> float | None:
                    vs = [v for v in values if v is not None]
                    return round(statistics.mean(vs), 4) if vs else None

                out.append({
                    "mode": mode, "length": length, "questions": len(rows), "errors": len(rows) - len(ok),
                    "accuracy": round(sum(r.right for r in ok) / len(rows), 3),
                    "evidence_hit": round(sum(r.evidence_hit for r in ok) / len(rows), 3),
                    "median_ttft_ms": round(statistics.median(r.ttft_ms for r in ok), 1) if ok else None,
                    "median_tokens_per_s": round(statistics.median(r.tokens_per_s for r in ok), 2) if ok else None,
                    "kv_fraction": mean([r.kv_fraction for r in ok]),
                    "acceptance": mean([r.acceptance for r in ok]),
                    "fallbacks": sorted({r.fallback for r in ok if r.fallback}),
                })
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"decoder": self.decoder, "lengths": self.lengths, "modes": self.modes,
                "summary": self.summary(), "rows": [asdict(r) for r in self.rows]}

    def table(self) -> str:
        def fmt(v: Any) -> str:
            return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

        lines = ["| mode | tokens | questions | accuracy | evidence hit | TTFT ms | decode tok/s | KV held | acceptance |",
                 "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for s in self.summary():
            lines.append(f"| {s['mode']} | {s['length']} | {s['questions']} | {fmt(s['accuracy'])} | "
                         f"{fmt(s['evidence_hit'])} | {fmt(s['median_ttft_ms'])} | {fmt(s['median_tokens_per_s'])} | "
                         f"{fmt(s['kv_fraction'])} | {fmt(s['acceptance'])} |")
        return "\n".join(lines)


def needle_document(haystack: str, tokens: int, needles: Sequence[Needle], count_tokens: Callable[[str], int]
                    ) -> tuple[str, list[tuple[int, int, float]]]:
    """The haystack cut to about ``tokens`` decoder tokens with ``needles`` inserted as their own
    paragraphs at depths spread evenly over 0.05-0.95. Returns (text, [(start, end, depth)])."""
    paragraphs = [p for p in re.split(r"\n\s*\n", haystack) if p.strip()]
    budget = tokens - sum(count_tokens(n.fact) + 2 for n in needles)
    kept, used = [], 0
    for p in paragraphs:
        n = count_tokens(p) + 2
        if used + n > budget:
            break
        kept.append(p.strip())
        used += n
    if len(kept) < 2:
        raise ValueError(f"the haystack is too short for {tokens} tokens")
    depths = [0.05 + 0.9 * i / max(1, len(needles) - 1) for i in range(len(needles))]
    starts, acc = [], 0  # character offset of each paragraph boundary (before paragraph i)
    for p in kept:
        starts.append(acc)
        acc += len(p) + 2
    starts.append(acc)
    slots = [min(range(1, len(starts)), key=lambda i: abs(starts[i] - d * acc)) for d in depths]
    # depths rise with the needle's index, so slots do too: the needles go in in their own order
    parts: list[str] = []
    spans: list[tuple[int, int, float]] = []
    pos, j = 0, 0
    for i, p in enumerate(kept + [None]):
        while j < len(needles) and slots[j] == i:
            spans.append((pos, pos + len(needles[j].fact), depths[j]))
            parts.append(needles[j].fact)
            pos += len(needles[j].fact) + 2
            j += 1
        if p is not None:
            parts.append(p)
            pos += len(p) + 2
    return "\n\n".join(parts) + "\n", spans


def _row(label: str, length: int, j: int, span: tuple[int, int, float], needle: Needle, answer: Any) -> Row:
    s = answer.stats
    full = s.get("kv_bytes_full")
    return Row(
        mode=label, length=length, needle=j, depth=round(span[2], 3), answer=answer.answer,
        right=needle.answer.lower() in answer.answer.lower(),
        evidence_hit=any(e.start < span[1] and e.end > span[0] for e in answer.evidence),
        ttft_ms=answer.timings.get("ttft_ms", 0.0), tokens_per_s=answer.timings.get("tokens_per_s", 0.0),
        total_ms=answer.timings.get("total_ms", 0.0),
        kv_fraction=round(s["kv_bytes"] / full, 4) if full and s.get("kv_bytes") is not None else None,
        acceptance=s.get("acceptance_rate"),
        fallback=s.get("kv_fallback") or s.get("decoder_note"),
    )


def run_eval(
    *,
    decoder: str | None = None,
    modes: Sequence[str] = tuple(MODES),
    lengths: Sequence[int] = LENGTHS,
    needles: int = len(NEEDLES),
    haystack: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Ingest one needle document per length into a temporary store and ask every needle's
    question in every mode (product defaults). ``progress(done, total)`` after each question."""
    from longrag.config import Settings, get_settings
    from longrag.errors import LongragError
    from longrag.services.corpus import Corpus
    from longrag.services.qa import QAPipeline, Question

    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
    if not 1 <= needles <= len(NEEDLES):
        raise ValueError(f"needles must be 1..{len(NEEDLES)}")
    chosen = NEEDLES[:needles]
    text = (haystack or HAYSTACK).read_text(encoding="utf-8")
    base = get_settings()
    report = EvalReport(decoder or base.decoder, list(lengths), list(modes))
    total, done = len(lengths) * len(modes) * len(chosen), 0
    with tempfile.TemporaryDirectory(prefix="longrag-eval-") as tmp:
        settings = Settings(**{**base.model_dump(), "data_dir": Path(tmp), "decoder": decoder or base.decoder})
        corpus = Corpus(settings=settings)
        pipe = QAPipeline(corpus, settings=settings)
        tok = pipe.decoder.tokenizer

        def count(s: str) -> int:
            return len(tok(s, add_special_tokens=False)["input_ids"])

        for length in lengths:
            doc, spans = needle_document(text, length, chosen, count)
            doc_id = corpus.ingest_bytes(doc.encode("utf-8"), f"needles-{length}.txt").doc_id
            log.info("eval: %d-token document %s", length, doc_id)
            for label in modes:
                mode, kv = MODES[label]
                for j, needle in enumerate(chosen):
                    t0 = time.perf_counter()
                    try:
                        ans = pipe.ask(Question(needle.question, doc_ids=[doc_id], mode=mode, kv=kv))
                        report.rows.append(_row(label, length, j, spans[j], needle, ans))
                    except LongragError as exc:
                        report.rows.append(Row(label, length, j, round(spans[j][2], 3), "", False, False,
                                               0.0, 0.0, (time.perf_counter() - t0) * 1000, None, None, None,
                                               error=f"{exc.code}: {exc}"))
                    done += 1
                    if progress is not None:
                        progress(done, total)
    return report
