"""Loaders of the evaluation data in ``../shared/datasets`` (see its README.md)."""

from __future__ import annotations

import json
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path

from bench.common import DATASETS

PARAGRAPH_SEP = "\n\n"


@dataclass(frozen=True)
class SquadQuestion:
    qid: str
    question: str
    article: int  # index of the article (= document) it belongs to
    answers: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]  # gold answer [start, end) offsets in the article text


@dataclass(frozen=True)
class SquadArticle:
    title: str
    text: str  # paragraphs joined with blank lines
    paragraph_starts: tuple[int, ...]


def load_squad(root: Path = DATASETS) -> tuple[list[SquadArticle], list[SquadQuestion]]:
    """SQuAD v1.1 dev: one document per article; answer offsets mapped into the article text."""
    with zipfile.ZipFile(root / "squad_v1.1" / "dev-v1.1.json.zip") as zf:
        name = next(n for n in zf.namelist() if n.endswith(".json"))
        data = json.loads(zf.read(name))["data"]
    articles: list[SquadArticle] = []
    questions: list[SquadQuestion] = []
    for a_idx, art in enumerate(data):
        starts, parts, pos = [], [], 0
        for para in art["paragraphs"]:
            starts.append(pos)
            parts.append(para["context"])
            pos += len(para["context"]) + len(PARAGRAPH_SEP)
        text = PARAGRAPH_SEP.join(parts)
        articles.append(SquadArticle(art["title"], text, tuple(starts)))
        for p_idx, para in enumerate(art["paragraphs"]):
            base = starts[p_idx]
            for qa in para["qas"]:
                spans = []
                for ans in qa["answers"]:
                    s = base + ans["answer_start"]
                    e = s + len(ans["text"])
                    assert text[s:e] == ans["text"], (qa["id"], ans)
                    spans.append((s, e))
                questions.append(SquadQuestion(
                    qa["id"], qa["question"], a_idx, tuple(a["text"] for a in qa["answers"]), tuple(spans)
                ))
    return articles, questions


def squad_sample(questions: list[SquadQuestion], n: int, seed: int = 0) -> list[SquadQuestion]:
    """A fixed random sample (``random.Random(seed).sample``), in sample order."""
    if n >= len(questions):
        return list(questions)
    return random.Random(seed).sample(questions, n)


@dataclass(frozen=True)
class BeirSet:
    corpus: dict[str, tuple[str, str]]  # id -> (title, text)
    queries: dict[str, str]
    qrels: dict[str, dict[str, float]]  # query id -> {doc id: grade}


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_beir(folder: Path) -> BeirSet:
    corpus = {d["_id"]: (d.get("title", ""), d.get("text", "")) for d in _read_jsonl(folder / "corpus.jsonl")}
    queries = {q["_id"]: q["text"] for q in _read_jsonl(folder / "queries.jsonl")}
    qrels: dict[str, dict[str, float]] = {}
    with open(folder / "qrels" / "test.tsv", encoding="utf-8") as f:
        next(f)  # header
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3:
                continue
            qid, did, score = parts[0], parts[1], float(parts[2])
            if score > 0:
                qrels.setdefault(qid, {})[did] = score
    queries = {q: t for q, t in queries.items() if q in qrels}
    return BeirSet(corpus, queries, qrels)


def load_hotpot_beir(root: Path = DATASETS) -> BeirSet:
    return load_beir(root / "hotpotqa" / "derived_beir")


def load_cranfield(root: Path = DATASETS) -> BeirSet:
    """Cranfield (BEIR view): query ids are the ordinal positions in cran.qry, as cranqrel uses."""
    return load_beir(root / "cranfield" / "beir")


def hotpot_gold_sentences(root: Path = DATASETS) -> list[list[str]]:
    """Paragraphs as lists of gold sentences (HotpotQA first-100 file, de-duplicated by title)."""
    data = json.loads((root / "hotpotqa" / "hotpotqa_dev_distractor_first100_hf.json").read_text())
    seen: set[str] = set()
    out: list[list[str]] = []
    for ex in data:
        for title, sents in zip(ex["context"]["title"], ex["context"]["sentences"]):
            if title in seen:
                continue
            seen.add(title)
            out.append(list(sents))
    return out
