"""Right answers on real long documents: longrag's default path against the LangChain and BM25 peers.

Sets (``--sets``, comma separated):

- ``books``: questions written for this bench over eight Gutenberg novels
  (``bench/books_questions.json``: answer + aliases + the offsets of a passage that states it,
  and questions the book does not answer). Asked over the question's whole book (scope ``doc``)
  and over all eight books at once (scope ``collection``).
- ``leval``: L-Eval ``natural_question`` (open questions over whole Wikipedia pages), scope ``doc``.
- ``squad``: the fixed SQuAD v1.1 300-question sample of ``bench.e2e_squad``, open retrieval over
  its 48 articles (scope ``collection``).
- ``squad2``: the SQuAD v2.0 slice (2 articles; answerable and unanswerable questions), scope ``doc``.

Systems, interleaved question by question so that all see the same machine load:

- ``longrag``: ``QAPipeline.ask`` with every default (the product path; plain mode);
- ``langchain``: RecursiveCharacterTextSplitter + MiniLM + LangChain FAISS + the same decoder and prompt;
- ``bm25``: bm25s over longrag's chunks + the same decoder and prompt.

Measured per system: accuracy (a normalised alias occurs in the answer), EM / F1 (max over
aliases), whether the answer string is inside the cited evidence (longrag: its evidence spans;
peers: the passages they retrieved), abstention (longrag: ``answerable: false``; peers: the
prompt's "unknown"), median / p90 seconds per question and the 1-minute load average.

Answers go to ``bench/results/books/<set>-<scope>-<system>.jsonl`` as they come (a run resumes);
the summary to ``bench/results/books.json``. ``python -m bench.books`` runs everything;
``--split dev`` / ``--split test`` restrict the books set to its dev / test questions.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import DATASETS, RESULTS, WORK, hardware, set_threads, write_result
from bench.metrics import best_em_f1, normalize_answer

log = logging.getLogger("bench.books")
QUESTIONS = Path(os.environ.get("LONGRAG_BOOKS_QUESTIONS", Path(__file__).with_name("books_questions.json")))
OUT = RESULTS / "books"
TOP_K = 4  # the peers' passages (longrag's own default is whatever Settings says)
LC_CHUNK_CHARS = 550
LC_OVERLAP = 50
LEVAL_SET = "natural_question"
DEV_PER_BOOK = 4  # the first questions of each book form the dev split (options chosen on them)


# -- data --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Doc:
    key: str  # stable name inside the bench
    title: str
    text: str


@dataclass(frozen=True)
class Item:
    qid: str
    question: str
    doc: str  # Doc.key
    answers: tuple[str, ...]  # empty: the document does not answer it
    split: str = "test"
    kind: str = ""


@dataclass
class QASet:
    name: str
    scope: str  # doc | collection
    docs: list[Doc]
    items: list[Item]
    meta: dict = field(default_factory=dict)


def books_set(scope: str, split: str = "all") -> QASet:
    data = json.loads(QUESTIONS.read_text(encoding="utf-8"))
    root = DATASETS / "gutenberg"
    # uploaded as a user would: the file under its own name, which becomes the title
    docs = [Doc(name, name, (root / name).read_text(encoding="utf-8")) for name in data["books"]]
    seen: dict[str, int] = {}
    items = []
    for q in data["questions"]:
        n = seen[q["book"]] = seen.get(q["book"], 0) + (1 if q.get("answerable", True) else 0)
        s = "dev" if q.get("answerable", True) and n <= DEV_PER_BOOK else "test"
        if split != "all" and s != split:
            continue
        items.append(Item(q["id"], q["question"], q["book"], tuple(q["answers"]), s, q.get("kind", "")))
    return QASet("books", scope, docs, items, {"source": QUESTIONS.name})


def leval_set(n: int) -> QASet:
    rows = [json.loads(line) for line in (DATASETS / "leval" / f"{LEVAL_SET}.jsonl").read_text().splitlines() if line]
    docs, items = [], []
    for d, row in enumerate(rows):
        key = f"{LEVAL_SET}-{d:02d}"
        docs.append(Doc(key, key, row["input"]))
        for i, (q, a) in enumerate(zip(row["instructions"], row["outputs"])):
            items.append(Item(f"{key}-{i}", q, key, (a,)))
    # round robin over documents, so a sample of n spreads over all of them
    by_doc: dict[str, list[Item]] = {}
    for it in items:
        by_doc.setdefault(it.doc, []).append(it)
    order = [it for rnd in range(max(len(v) for v in by_doc.values()))
             for v in by_doc.values() if rnd < len(v) for it in [v[rnd]]]
    return QASet("leval", "doc", docs, order[:n], {"source": f"L-Eval {LEVAL_SET}.jsonl"})


def squad_set(n: int) -> QASet:
    from bench.data import load_squad, squad_sample
    from bench.e2e_squad import SEED

    articles, questions = load_squad()
    docs = [Doc(f"squad-{i:02d}", a.title, a.text) for i, a in enumerate(articles)]
    sample = squad_sample(questions, n, seed=SEED)
    items = [Item(q.qid, q.question, f"squad-{q.article:02d}", q.answers) for q in sample]
    return QASet("squad", "collection", docs, items, {"source": "SQuAD v1.1 dev, bench.e2e_squad sample (seed 0)"})


def squad2_set(n: int) -> QASet:
    raw = json.loads((DATASETS / "squad_v2.0_slice" / "dev-v2.0.2articles.json").read_text())["data"]
    docs, answerable, impossible = [], [], []
    for art in raw:
        key = f"squad2-{art['title']}"
        docs.append(Doc(key, art["title"], "\n\n".join(p["context"] for p in art["paragraphs"])))
        for p in art["paragraphs"]:
            for qa in p["qas"]:
                golds = tuple(dict.fromkeys(a["text"] for a in qa["answers"]))
                (impossible if qa["is_impossible"] else answerable).append(Item(qa["id"], qa["question"], key, golds))
    half = n // 2  # as many answerable as unanswerable questions, spread evenly over the slice
    pick = lambda xs, m: xs[:: max(1, len(xs) // m)][:m]  # noqa: E731
    items = [it for pair in zip(pick(answerable, half), pick(impossible, half)) for it in pair]
    return QASet("squad2", "doc", docs, items, {"source": "SQuAD v2.0 dev slice (Normans, Rhine)"})


# -- systems -----------------------------------------------------------------------------------
Runner = Callable[[Item, "str | None"], dict]  # (item, doc_id or None for the collection) -> row


class Longrag:
    """The product: a Corpus holding every document of the set, QAPipeline with defaults."""

    def __init__(self, qaset: QASet, work: Path, decoder: str | None, overrides: dict) -> None:
        from longrag.config import Settings
        from longrag.services.corpus import Corpus
        from longrag.services.qa import QAPipeline

        settings = Settings(data_dir=work / f"longrag-{qaset.name}", **overrides)
        self.corpus = Corpus(settings=settings)
        t0 = time.perf_counter()
        self.doc_ids = {}
        for d in qaset.docs:
            filename = d.key if d.key.endswith(".txt") else f"{d.key}.txt"
            res = self.corpus.ingest_bytes(d.text.encode("utf-8"), filename, title=None if d.title == d.key else d.title)
            self.doc_ids[d.key] = res.doc_id
            if self.corpus.text(res.doc_id) != d.text:
                raise AssertionError(f"parsed text of {d.key} differs from the file")
        self.ingest_seconds = time.perf_counter() - t0
        self.pipe = QAPipeline(self.corpus, decoder_name=decoder)

    def __call__(self, item: Item, doc_key: str | None) -> dict:
        from longrag.services.qa import Question

        from longrag.services.qa import plain_context

        doc_ids = [self.doc_ids[doc_key]] if doc_key else None
        t0 = time.perf_counter()
        ans = self.pipe.ask(Question(text=item.question, doc_ids=doc_ids))
        seconds = time.perf_counter() - t0
        _, passages, _ = plain_context(self.pipe, Question(text=item.question, doc_ids=doc_ids))  # what it read
        return {
            "seconds": round(seconds, 3),
            "answer": ans.answer,
            "answerable": ans.answerable,
            "evidence": [e.text for e in ans.evidence],
            "context": "\n\n".join(h.text for h in passages),
            "prompt_tokens": ans.stats.get("prompt_tokens"),
            "stats": ans.stats,
        }


def _decode(decoder, question: str, passages: list[str]) -> tuple[str, int]:
    from longrag.config import get_settings
    from longrag.generation.decoding import generate
    from longrag.generation.prompts import answer_messages, context_block, encode_chat

    ids = encode_chat(decoder.tokenizer, answer_messages(question, context_block(passages)))
    gen = generate(decoder.model, decoder.tokenizer, ids, max_new_tokens=get_settings().max_new_tokens)
    return gen.text, gen.prompt_tokens


class LangChainPeer:
    """RecursiveCharacterTextSplitter + MiniLM (HuggingFaceEmbeddings) + LangChain FAISS, one
    store per document and one over the collection; the same decoder and prompt as longrag."""

    def __init__(self, qaset: QASet, work: Path, decoder) -> None:
        from langchain_community.embeddings import HuggingFaceEmbeddings
        from langchain_community.vectorstores import FAISS
        from langchain_core.documents import Document
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        from longrag.models.registry import resolve

        path, _ = resolve("all-minilm-l6-v2")
        emb = HuggingFaceEmbeddings(model_name=path, model_kwargs={"device": "cpu", "local_files_only": True},
                                    encode_kwargs={"normalize_embeddings": True})
        splitter = RecursiveCharacterTextSplitter(chunk_size=LC_CHUNK_CHARS, chunk_overlap=LC_OVERLAP)
        self.stores = {}
        for d in qaset.docs:
            cache = work / f"langchain-{qaset.name}" / d.key
            if (cache / "index.faiss").exists():
                self.stores[d.key] = FAISS.load_local(str(cache), emb, allow_dangerous_deserialization=True)
            else:
                docs = splitter.split_documents([Document(page_content=d.text, metadata={"doc": d.key})])
                self.stores[d.key] = FAISS.from_documents(docs, emb)
                self.stores[d.key].save_local(str(cache))
        self.all = None
        if qaset.scope == "collection" or len(qaset.docs) > 1:
            # FAISS merge_from moves the vectors out of its argument: merge fresh copies, never
            # the per-document stores (they would be left empty)
            first, *rest = [FAISS.load_local(str(work / f"langchain-{qaset.name}" / d.key), emb,
                                             allow_dangerous_deserialization=True) for d in qaset.docs]
            self.all = first
            for store in rest:
                self.all.merge_from(store)
        self.decoder = decoder

    def __call__(self, item: Item, doc_key: str | None) -> dict:
        store = self.stores[doc_key] if doc_key else self.all
        passages = [d.page_content for d in store.similarity_search(item.question, k=TOP_K)]
        answer, n = _decode(self.decoder, item.question, passages)
        return {"answer": answer, "answerable": not _is_unknown(answer), "evidence": passages,
                "context": "\n\n".join(passages), "prompt_tokens": n}


class Bm25Peer:
    """bm25s (English stop words) over longrag's own chunks; the same decoder and prompt."""

    def __init__(self, ours: Longrag, decoder) -> None:
        import bm25s

        self.index: dict[str | None, tuple[object, list[str]]] = {}
        everything: list[str] = []
        for key, doc_id in ours.doc_ids.items():
            text = ours.corpus.text(doc_id)
            texts = [text[c.start:c.end] for _, c in ours.corpus.store.chunks(doc_id)]
            self.index[key] = (self._build(bm25s, texts), texts)
            everything.extend(texts)
        self.index[None] = (self._build(bm25s, everything), everything)
        self.decoder = decoder

    @staticmethod
    def _build(bm25s, texts: list[str]):
        r = bm25s.BM25()
        r.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
        return r

    def __call__(self, item: Item, doc_key: str | None) -> dict:
        import bm25s

        retriever, texts = self.index[doc_key]
        res, _ = retriever.retrieve(bm25s.tokenize([item.question], stopwords="en", show_progress=False),
                                    k=min(TOP_K, len(texts)), show_progress=False)
        passages = [texts[int(i)] for i in res[0]]
        answer, n = _decode(self.decoder, item.question, passages)
        return {"answer": answer, "answerable": not _is_unknown(answer), "evidence": passages,
                "context": "\n\n".join(passages), "prompt_tokens": n}


def _is_unknown(answer: str) -> bool:
    norm = normalize_answer(answer)
    return not norm or norm == "unknown" or norm.startswith("unknown ")


# -- scoring -----------------------------------------------------------------------------------
_POSSESSIVE = re.compile(r"['\u2019]s\b")


def contains(text: str, alias: str) -> bool:
    """The alias's normalised words occur, in order and whole, in the text's normalised words
    (a possessive 's is dropped first: "Dan Cody's yacht" holds "Dan Cody")."""
    a = normalize_answer(_POSSESSIVE.sub("", alias))
    return bool(a) and f" {a} " in f" {normalize_answer(_POSSESSIVE.sub('', text))} "


def score(item: Item, row: dict) -> dict:
    if not item.answers:  # the document does not answer it
        return {"answerable_gold": False, "abstained": not row["answerable"]}
    answer = row["answer"] if row["answerable"] else ""
    right = any(contains(answer, a) for a in item.answers)
    em, f1 = best_em_f1(answer, item.answers)
    matched = [a for a in item.answers if contains(answer, a)]
    in_evidence = right and any(contains(e, a) for e in row["evidence"] for a in matched)
    return {"answerable_gold": True, "correct": right, "em": em, "f1": f1, "abstained": not row["answerable"],
            "answer_in_evidence": in_evidence,
            "answer_in_context": any(contains(row.get("context", ""), a) for a in item.answers)}


def _done(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    return {r["qid"]: r for r in map(json.loads, filter(str.strip, path.read_text().splitlines()))}


def summarise(rows: list[dict]) -> dict:
    ans = [r for r in rows if r["answerable_gold"]]
    una = [r for r in rows if not r["answerable_gold"]]
    secs = sorted(r["seconds"] for r in rows)
    right = [r for r in ans if r["correct"]]

    def mean(xs: list, key: str) -> float | None:
        return round(sum(float(x[key]) for x in xs) / len(xs), 4) if xs else None

    return {
        "questions": len(rows), "answerable": len(ans), "unanswerable": len(una),
        "accuracy": mean(ans, "correct"), "em": mean(ans, "em"), "f1": mean(ans, "f1"),
        "answer_in_context": mean(ans, "answer_in_context"),
        "answer_in_evidence_of_right": mean(right, "answer_in_evidence"),
        "abstained_on_answerable": mean(ans, "abstained"),
        "abstained_on_unanswerable": mean(una, "abstained"),
        "median_s": round(statistics.median(secs), 2) if secs else None,
        "p90_s": round(secs[min(len(secs) - 1, int(0.9 * len(secs)))], 2) if secs else None,
        "mean_load_1m": round(statistics.mean(r["load_1m"] for r in rows), 2) if rows else None,
    }


# -- the run -----------------------------------------------------------------------------------
def build_sets(names: list[str], split: str, n_leval: int, n_squad: int, n_squad2: int) -> Iterator[QASet]:
    for name in names:
        if name == "books":
            yield books_set("doc", split)
            yield books_set("collection", split)
        elif name == "leval":
            yield leval_set(n_leval)
        elif name == "squad":
            yield squad_set(n_squad)
        elif name == "squad2":
            yield squad2_set(n_squad2)
        else:
            raise SystemExit(f"unknown set {name!r}")


def run_set(qaset: QASet, systems: list[str], work: Path, decoder_name: str | None, overrides: dict,
            tag: str, limit: int, summary_only: bool = False) -> dict:
    ours = Longrag(qaset, work, decoder_name, overrides)
    decoder = ours.pipe.decoder
    runners: dict[str, Runner] = {}
    for s in systems:
        if s == "longrag":
            runners[s] = ours
        elif s == "langchain":
            runners[s] = LangChainPeer(qaset, work, decoder)
        elif s == "bm25":
            runners[s] = Bm25Peer(ours, decoder)
        else:
            raise SystemExit(f"unknown system {s!r}")
    OUT.mkdir(parents=True, exist_ok=True)
    paths = {s: OUT / f"{qaset.name}-{qaset.scope}-{s}{tag}.jsonl" for s in systems}
    done = {s: _done(p) for s, p in paths.items()}
    items = qaset.items[:limit] if limit else qaset.items
    for i, item in enumerate([] if summary_only else items):
        for s in systems:  # interleaved: every system sees the same machine load
            if item.qid in done[s]:
                continue
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            row = runners[s](item, item.doc if qaset.scope == "doc" else None)
            row = {"qid": item.qid, "question": item.question, "gold": list(item.answers), "split": item.split,
                   "seconds": round(time.perf_counter() - t0, 3), "load_1m": load, **row}  # a runner may time itself
            row.update(score(item, row))
            with open(paths[s], "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            done[s][item.qid] = row
        log.info("%s/%s: %d/%d", qaset.name, qaset.scope, i + 1, len(items))
    by_qid = {it.qid: it for it in items if all(it.qid in done[s] for s in systems)}  # asked of every system  # scored again here, so every row reads the current metric
    rescored = {s: [{**r, **score(by_qid[q], r)} for q, r in done[s].items() if q in by_qid] for s in systems}
    return {
        "scope": qaset.scope, "documents": len(qaset.docs), "source": qaset.meta.get("source"),
        "longrag_ingest_seconds": round(ours.ingest_seconds, 1),
        "results": {s: summarise(rescored[s]) for s in systems},
    }


def table(summary: dict) -> str:
    lines = ["| set | scope | system | questions | accuracy | EM / F1 | answer in evidence | abstains (unanswerable) | median / p90 s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key, res in summary.items():
        name, scope = key.split("/")
        for system, r in res["results"].items():
            fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
            lines.append(f"| {name} | {scope} | {system} | {r['questions']} | {fmt(r['accuracy'])} | "
                         f"{fmt(r['em'])} / {fmt(r['f1'])} | {fmt(r['answer_in_evidence_of_right'])} | "
                         f"{fmt(r['abstained_on_unanswerable'])} | {r['median_s']} / {r['p90_s']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="books,leval,squad,squad2")
    ap.add_argument("--systems", default="longrag,langchain,bm25")
    ap.add_argument("--split", default="all", choices=["all", "dev", "test"], help="books set only")
    ap.add_argument("--scopes", default="doc,collection", help="books set: which scopes to run")
    ap.add_argument("--n-leval", type=int, default=60)
    ap.add_argument("--n-squad", type=int, default=300)
    ap.add_argument("--n-squad2", type=int, default=100)
    ap.add_argument("--limit", type=int, default=0, help="at most this many questions per set (smoke runs)")
    ap.add_argument("--decoder", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                    help="a longrag Settings override (variants); results get a tag")
    ap.add_argument("--summary-only", action="store_true", help="summarise the answers so far without asking")
    ap.add_argument("--tag", default="", help="suffix of the result names")
    ap.add_argument("--work", type=Path, default=WORK / "books")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    set_threads(2)
    overrides = dict(o.split("=", 1) for o in args.overrides)
    tag = args.tag or ("-" + "-".join(f"{k}={v}" for k, v in overrides.items()) if overrides else "")
    summary = {}
    scopes = set(args.scopes.split(","))
    for qaset in build_sets(args.sets.split(","), args.split, args.n_leval, args.n_squad, args.n_squad2):
        if qaset.name == "books" and qaset.scope not in scopes:
            continue
        summary[f"{qaset.name}/{qaset.scope}"] = run_set(qaset, args.systems.split(","), args.work, args.decoder,
                                                         overrides, tag, args.limit, args.summary_only)
        print(table({f"{qaset.name}/{qaset.scope}": summary[f"{qaset.name}/{qaset.scope}"]}), flush=True)
    from longrag.config import Settings

    payload = {
        "setup": {"decoder": args.decoder or Settings().decoder, "overrides": overrides, "split": args.split,
                  "peers_top_k": TOP_K, "prompt": "longrag.generation.prompts.answer_messages (all systems)",
                  "langchain": f"RecursiveCharacterTextSplitter({LC_CHUNK_CHARS}, {LC_OVERLAP}) + MiniLM + FAISS",
                  "accuracy": "a normalised alias occurs whole in the normalised answer (abstaining counts wrong)"},
        "hardware": hardware(),
        "sets": summary,
    }
    write_result(f"books{tag}", payload)
    print(table(summary))


if __name__ == "__main__":
    main()
