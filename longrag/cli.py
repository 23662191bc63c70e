"""The ``longrag`` command line: ingest, docs, show, delete, search, ask, chat (and the servers)."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer

from longrag.errors import InvalidRequestError, LongragError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Document QA over long documents.")
log = logging.getLogger("longrag.cli")


NOT_ANSWERED = "(the documents do not answer this question)"


def _fail(exc: LongragError) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=2)


def _options(pairs: list[str]) -> dict:
    """``KEY=VALUE`` pairs as a mode's options dict (VALUE as JSON when it parses, else text)."""
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidRequestError(f"--option takes KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _check_database() -> None:
    """Open the configured database now: a wrong URL, password or schema version stops a
    server or worker at start with a clear error instead of failing its first request."""
    from longrag.config import get_settings
    from longrag.services.db import open_database

    try:
        open_database(get_settings())
    except LongragError as exc:
        _fail(exc)


def _emit(obj, as_json: bool, human) -> None:
    if as_json:
        typer.echo(json.dumps(obj, ensure_ascii=False, indent=None))
    else:
        human(obj)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress to stderr.")] = False) -> None:
    from longrag.config import get_settings
    from longrag.services.runtime import configure_logging

    configure_logging(logging.INFO if verbose else logging.WARNING)
    try:
        get_settings()  # a bad LONGRAG_* value: one clear line, not a traceback from inside a command
    except LongragError as exc:
        _fail(exc)


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files to ingest (.txt .md .html .pdf .docx .pptx .epub).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Ingest documents; identical bytes are a no-op that returns the same id."""
    from longrag.services.runtime import get_corpus

    corpus = get_corpus()
    results, failed = [], 0
    for p in paths:
        try:
            r = corpus.ingest_path(p)
            results.append({"doc_id": r.doc_id, "path": str(p), "created": r.created,
                            "sentences": r.n_sentences, "chunks": r.n_chunks})
        except LongragError as exc:
            failed += 1
            typer.echo(f"error: {p}: {exc}", err=True)
    _emit([{k: r[k] for k in ("doc_id", "path")} | {"created": r["created"]} for r in results], as_json,
          lambda rs: [typer.echo(f"{r['doc_id']}  {r['path']}{'' if r['created'] else '  (already stored)'}") for r in rs])
    if failed:
        raise typer.Exit(code=2)


@app.command()
def docs(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List stored documents."""
    from longrag.services.runtime import get_corpus

    rows = [asdict(d) for d in get_corpus().list()]
    _emit(rows, as_json, lambda rs: [typer.echo(
        f"{r['doc_id']}  {r['n_chars']:>9} chars  {r['n_chunks']:>6} chunks  {r['title']}") for r in rs])


@app.command()
def show(doc_id: str) -> None:
    """Print a document's parsed text (the text every evidence offset indexes)."""
    from longrag.services.runtime import get_corpus

    try:
        text = get_corpus().text(doc_id)
    except LongragError as exc:
        _fail(exc)
    sys.stdout.write(text)
    sys.stdout.flush()


@app.command()
def delete(doc_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Delete a document, its chunks and its vectors."""
    from longrag.services.runtime import get_corpus

    try:
        info = get_corpus().delete(doc_id)
    except LongragError as exc:
        _fail(exc)
    _emit({"doc_id": info.doc_id, "deleted": True}, as_json, lambda r: typer.echo(f"deleted {r['doc_id']}"))


@app.command()
def search(
    query: str,
    doc: Annotated[Optional[list[str]], typer.Option("--doc", help="Restrict to this document id (repeatable).")] = None,
    k: Annotated[int, typer.Option("--k", help="Number of results.")] = 10,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    retriever: Annotated[Optional[str], typer.Option(
        "--retriever", help="chunk | situated | bm25 | hybrid (default: LONGRAG_RETRIEVER, hybrid).")] = None,
    link_hop: Annotated[Optional[int], typer.Option(
        "--link-hop", help="Top hits read for titles of other documents, whose openings join the results; 0: off "
        "(default: LONGRAG_LINK_HOP, 5).")] = None,
) -> None:
    """Search chunks; prints doc id, offsets, score and text."""
    from longrag.services.runtime import get_corpus

    try:
        hits = get_corpus().search(query, k=k, doc_ids=doc, retriever=retriever, link_hop=link_hop)
    except LongragError as exc:
        _fail(exc)
    rows = [{"doc_id": h.doc_id, "start": h.start, "end": h.end, "text": h.text, "score": round(h.score, 6)} for h in hits]
    _emit(rows, as_json, lambda rs: [typer.echo(
        f"{r['score']:.3f}  {r['doc_id']}[{r['start']}:{r['end']}]  {r['text'][:160]!r}") for r in rs])


def _write_piece(piece: str) -> None:
    """Stream one decoded piece to the terminal as it arrives."""
    sys.stdout.write(piece)
    sys.stdout.flush()


@app.command()
def ask(
    question: str,
    doc: Annotated[Optional[list[str]], typer.Option("--doc", help="Restrict to this document id (repeatable).")] = None,
    mode: Annotated[str, typer.Option("--mode", help="plain | full | cfic | rapid | refrag.")] = "plain",
    k: Annotated[Optional[int], typer.Option("--k", help="Passages to retrieve.")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    stream: Annotated[bool, typer.Option("--stream/--no-stream", help="Print tokens as they come (text output).")] = True,
    retriever: Annotated[Optional[str], typer.Option(
        "--retriever", help="chunk | situated | bm25 | hybrid (default: LONGRAG_RETRIEVER, hybrid).")] = None,
    link_hop: Annotated[Optional[int], typer.Option(
        "--link-hop", help="Top hits read for titles of other documents, whose openings join the results; 0: off "
        "(default: LONGRAG_LINK_HOP, 5).")] = None,
    kv: Annotated[Optional[str], typer.Option("--kv", help="KV cache of the full and rapid modes: full | sentencekv (default: by context length).")] = None,
    option: Annotated[Optional[list[str]], typer.Option(
        "--option", "-o", help="A mode option KEY=VALUE (repeatable), as the REST API's options, e.g. "
        "--mode rapid -o drafter=llm -o eta=20 -o tail=0; VALUE is read as JSON when it parses.")] = None,
) -> None:
    """Answer a question with evidence (doc id, char offsets, exact text) and timings."""
    from longrag.services.qa import Question
    from longrag.services.runtime import get_pipeline

    try:
        options = _options(option or [])
    except LongragError as exc:
        _fail(exc)
    pipe = get_pipeline()
    on_token = _write_piece if stream and not as_json else None
    try:
        answer = pipe.ask(Question(question, doc_ids=doc, mode=mode, k=k, max_new_tokens=max_new_tokens, kv=kv,
                                   retriever=retriever, link_hop=link_hop, options=options), on_token)
    except LongragError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(answer.to_dict(), ensure_ascii=False))
        return
    if on_token is None:
        typer.echo(answer.answer if answer.answerable else NOT_ANSWERED)
    else:
        typer.echo("" if answer.answerable else f"\n{NOT_ANSWERED}")
    for ev in answer.evidence:
        typer.echo(f"  [{ev.doc_id} {ev.start}:{ev.end}] {ev.text[:200]!r}")
    t = answer.timings
    typer.echo(f"  retrieval {t['retrieval_ms']:.0f} ms, first token {t['ttft_ms']:.0f} ms, "
               f"total {t['total_ms']:.0f} ms, {t['tokens_per_s']:.1f} tokens/s")


@app.command()
def chat(
    doc: Annotated[Optional[list[str]], typer.Option("--doc", help="Restrict to this document id (repeatable).")] = None,
    conversation: Annotated[Optional[str], typer.Option(
        "--conversation", help="Go on with a stored conversation (its id, as the REST API gives it).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON answer per line.")] = False,
) -> None:
    """Ask follow-up questions in a terminal, one per line (an empty line or end of input stops).
    Each follow-up is rewritten to stand alone from the turns before it; the conversation is
    stored like the REST API's and its id printed first."""
    import time

    from longrag.services.conversations import Turn, get_conversations, standalone_question
    from longrag.services.qa import Question
    from longrag.services.runtime import get_pipeline

    pipe = get_pipeline()
    store = get_conversations(pipe.settings)
    try:
        conv = store.get(conversation) if conversation else store.create(pipe.corpus.check_docs(doc) or [])
    except LongragError as exc:
        _fail(exc)
    typer.echo(json.dumps({"conversation_id": conv.conversation_id}) if as_json else
               f"conversation {conv.conversation_id} (an empty line ends it)", err=not as_json)
    turns = list(conv.turns)
    while True:
        if not as_json:
            typer.echo("> ", nl=False, err=True)
        line = sys.stdin.readline()
        if not line.strip():
            return
        standalone = standalone_question(turns, line.strip())
        try:
            answer = pipe.ask(Question(standalone, doc_ids=doc or conv.doc_ids or None))
        except LongragError as exc:
            typer.echo(f"error: {exc}", err=True)
            continue
        result = store.record(conv.conversation_id, line.strip(), standalone, answer.to_dict())
        turns.append(Turn(line.strip(), standalone, result, time.time()))
        if as_json:
            typer.echo(json.dumps(result, ensure_ascii=False))
            continue
        if standalone != line.strip():
            typer.echo(f"  (asked as: {standalone})")
        typer.echo(answer.answer if answer.answerable else NOT_ANSWERED)
        for ev in answer.evidence:
            typer.echo(f"  [{ev.doc_id} {ev.start}:{ev.end}] {ev.text[:200]!r}")


def _lengths(spec: str) -> list[int]:
    """``2k,4k,8192`` -> [2048, 4096, 8192]."""
    out = []
    for part in filter(None, (p.strip().lower() for p in spec.split(","))):
        try:
            out.append(int(float(part[:-1]) * 1024) if part.endswith("k") else int(part))
        except ValueError:
            raise InvalidRequestError(f"--lengths takes token counts like 2k,4k,8192; got {part!r}") from None
    if not out or min(out) < 256:
        raise InvalidRequestError("--lengths: each length must be at least 256 tokens")
    return out


@app.command("eval")
def evaluate(
    decoder: Annotated[Optional[str], typer.Option("--decoder", help="Registry name, hub id or path (default: LONGRAG_DECODER).")] = None,
    modes: Annotated[str, typer.Option("--modes", help="Comma-separated: plain, full, full+sentencekv, rapid, cfic, refrag.")] =
        "plain,full,full+sentencekv,rapid,cfic,refrag",
    lengths: Annotated[str, typer.Option("--lengths", help="Document lengths in decoder tokens.")] = "2k,4k,8k,16k",
    needles: Annotated[int, typer.Option("--needles", help="Needles (questions) per document, 1-12.")] = 12,
    haystack: Annotated[Optional[Path], typer.Option("--haystack", help="A UTF-8 text to hide the needles in.")] = None,
    suites: Annotated[str, typer.Option("--suites", help="Comma-separated: needles (every answer mode on needle "
                                        "documents), retrieval (every retriever on short-sentence documents), answers "
                                        "(plain and cfic on the short-sentence documents).")] =
        "needles,retrieval,answers",
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the JSON report here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON report instead of the table.")] = False,
) -> None:
    """Every answer mode through the product path on needle documents (accuracy, evidence hit,
    TTFT, decode speed, KV held, RAPID acceptance), every retriever on short-sentence documents
    (R@1, R@3, MRR@10) and the plain and cfic modes on them (accuracy, evidence hit@3, latency),
    each in a temporary store, never yours."""
    from longrag.services.answers_eval import run_answers_eval
    from longrag.services.evaluation import run_eval
    from longrag.services.retrieval_eval import run_retrieval_eval

    chosen_suites = [x.strip() for x in suites.split(",") if x.strip()]
    if not chosen_suites or set(chosen_suites) - {"needles", "retrieval", "answers"}:
        _fail(InvalidRequestError(f"--suites: choose from needles, retrieval, answers (got {suites!r})"))
    body: dict = {}
    tables: list[str] = []
    try:
        if "needles" in chosen_suites:
            sizes = _lengths(lengths)
            chosen = [m.strip() for m in modes.split(",") if m.strip()]
            report = _with_progress(len(sizes) * len(chosen) * needles, lambda step: run_eval(
                decoder=decoder, modes=chosen, lengths=sizes, needles=needles, haystack=haystack, progress=step))
            body.update(report.to_dict())
            tables.append(report.table())
        if "retrieval" in chosen_suites:
            ranked = run_retrieval_eval()
            body["retrieval"] = ranked.to_dict()
            tables.append(ranked.table())
        if "answers" in chosen_suites:
            from longrag.services.answers_eval import MODES as ANSWER_MODES
            from longrag.services.retrieval_eval import load_docs

            n = len(ANSWER_MODES) * sum(len(d["questions"]) for d in load_docs())
            answered = _with_progress(n, lambda step: run_answers_eval(decoder=decoder, progress=step))
            body["answers"] = answered.to_dict()
            tables.append(answered.table())
    except ValueError as exc:
        _fail(InvalidRequestError(str(exc)))
    except LongragError as exc:
        _fail(exc)
    if out is not None:
        out.write_text(json.dumps(body, ensure_ascii=False, indent=1), encoding="utf-8")
    typer.echo(json.dumps(body, ensure_ascii=False) if as_json else "\n\n".join(tables))


def _with_progress(total: int, work):
    """Run ``work(step)`` under a progress bar on stderr; ``step(done, total)`` advances it."""
    with typer.progressbar(length=total, label="longrag eval", file=sys.stderr) as bar:
        last = {"n": 0}

        def step(done: int, _total: int) -> None:
            bar.update(done - last["n"])
            last["n"] = done

        return work(step)


@app.command()
def migrate(
    source: Annotated[Optional[str], typer.Option("--from", help="Database URL to copy from (sqlite:///path or postgresql://...).")] = None,
    target: Annotated[Optional[str], typer.Option("--to", help="Database URL to copy into.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Bring the configured database's schema up to date; with --from and --to, copy a whole
    store between databases (resumable, verified by counts and hashes)."""
    from longrag.config import get_settings
    from longrag.services.db import connect, database_url
    from longrag.services.migrate import copy_store
    from longrag.services.schema import LATEST, version

    try:
        if source is None and target is None:
            db = connect(database_url(get_settings()))
            _emit({"database": db.url, "schema_version": version(db), "latest": LATEST}, as_json,
                  lambda o: typer.echo(f"{o['database']}: schema version {o['schema_version']}"))
            return
        if not source or not target:
            raise InvalidRequestError("give both --from and --to (or neither, to upgrade the configured database)")
        src, dst = connect(source), connect(target)
        report = copy_store(src, dst, progress=lambda n, total: log.info("document %d of %d", n, total))
    except LongragError as exc:
        _fail(exc)
    out = {"from": src.url, "to": dst.url, "copied_documents": report.copied_documents,
           "skipped_documents": report.skipped_documents, "verified": report.verified,
           "counts": {t: {"source": s, "target": d} for t, (s, d) in report.counts.items()}}
    _emit(out, as_json, lambda o: typer.echo(f"copied {o['copied_documents']} documents "
                                             f"({o['skipped_documents']} already there); verified: {o['verified']}"))
    if not report.verified:
        raise typer.Exit(code=1)


@app.command("prepare-models")
def prepare_models(
    names: Annotated[Optional[list[str]], typer.Argument(help="Registry names (default: all bundled).")] = None,
) -> None:
    """Verify the bundled models (SHA-256) and build the safetensors caches once."""
    from longrag.models.registry import BUNDLED, resolve

    for name in names or list(BUNDLED):
        try:
            location, _ = resolve(name)
            if name in BUNDLED and BUNDLED[name].kind == "embedder":
                from longrag.models.registry import load_embedder

                load_embedder(name)  # exports the ONNX embedder once when that backend is chosen
        except LongragError as exc:
            _fail(exc)
        typer.echo(f"{name}: {location}")


@app.command()
def ui(
    port: Annotated[int, typer.Option("--port", help="Port of the Streamlit app.")] = 8501,
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    api_url: Annotated[Optional[str], typer.Option("--api-url", help="The REST API (default: LONGRAG_API_URL "
                                                   "or http://127.0.0.1:8000).")] = None,
) -> None:
    """Run the Streamlit document-QA app (headless); it talks to the REST API."""
    import os

    from longrag.config import get_settings

    script = Path(__file__).parent / "ui" / "app.py"
    env = dict(os.environ)
    if api_url:
        env["LONGRAG_API_URL"] = api_url
    cmd = [sys.executable, "-m", "streamlit", "run", str(script), "--server.headless", "true",
           "--server.port", str(port), "--server.address", host, "--browser.gatherUsageStats", "false",
           "--client.toolbarMode", "minimal",
           "--server.maxUploadSize", str(max(1, get_settings().max_file_bytes // (1024 * 1024)))]
    os.execve(sys.executable, cmd, env)  # the app replaces this process (signals reach Streamlit)


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port of the REST API.")] = 8000,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
) -> None:
    """Run the REST API (uvicorn). With LONGRAG_BROKER_URL set it only talks to workers."""
    import uvicorn

    _check_database()
    uvicorn.run("longrag.services.api:create_app", factory=True, host=host, port=port, log_level=log_level)


@app.command()
def worker(
    queues: Annotated[str, typer.Option("--queues", "-Q", help="Comma-separated: ingest, qa.")] = "ingest,qa",
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="Worker processes.")] = 1,
    pool: Annotated[Optional[str], typer.Option("--pool", help="solo | prefork | threads (default: solo "
                                                "for one process, else prefork).")] = None,
    loglevel: Annotated[str, typer.Option("--loglevel")] = "INFO",
) -> None:
    """Run a Celery worker on the configured broker (LONGRAG_BROKER_URL); models load once."""
    import os

    from longrag.config import get_settings

    settings = get_settings()
    if not settings.broker_url:
        typer.echo("error: set LONGRAG_BROKER_URL (e.g. redis://127.0.0.1:6379/0) to run a worker", err=True)
        raise typer.Exit(code=2)
    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = sorted(set(names) - {"ingest", "qa"})
    if not names or unknown:
        typer.echo(f"error: unknown queue(s) {unknown}; choose from ingest, qa", err=True)
        raise typer.Exit(code=2)
    pool = pool or ("solo" if concurrency == 1 else "prefork")
    _check_database()
    from longrag.workers import tasks

    if pool == "prefork":
        tasks._PRELOAD_QUEUES[:] = names  # each child loads its models at start
    else:
        typer.echo(f"worker {os.getpid()}: loaded {tasks.preload(names)}", err=True)
    argv = ["worker", f"--queues={','.join(names)}", f"--concurrency={concurrency}", f"--pool={pool}",
            f"--hostname=longrag-{'-'.join(names)}-{os.getpid()}@%h", f"--loglevel={loglevel}",
            "--without-gossip", "--without-mingle", "--prefetch-multiplier=1"]
    tasks.app.worker_main(argv=argv)


@app.command("run")
def run_all(
    host: Annotated[str, typer.Option("--host", help="Address the API and UI bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port of the REST API.")] = 8000,
    ui_port: Annotated[int, typer.Option("--ui-port", help="Port of the Streamlit app.")] = 8501,
) -> None:
    """The product on one host: the API, the Streamlit app, and a worker when a broker is set.

    Ctrl-C stops every child; if one child exits, the others are stopped too.
    """
    import os
    import signal
    import subprocess
    import time

    from longrag.config import get_settings

    settings = get_settings()
    me = [sys.executable, "-m", "longrag.cli"]
    api_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    children: dict[str, subprocess.Popen] = {}
    env = dict(os.environ, LONGRAG_API_URL=api_url)
    children["api"] = subprocess.Popen([*me, "serve", "--host", host, "--port", str(port)], env=env)
    if settings.broker_url:
        children["worker"] = subprocess.Popen([*me, "worker"], env=env)
        typer.echo(f"worker: Celery on {settings.broker_url}", err=True)
    else:
        typer.echo("embedded mode (no LONGRAG_BROKER_URL): the API runs ingestion and questions itself", err=True)
    if (Path(__file__).parent / "ui" / "app.py").exists():
        children["ui"] = subprocess.Popen([*me, "ui", "--host", host, "--port", str(ui_port), "--api-url", api_url],
                                          env=env)
        typer.echo(f"API: {api_url} (docs at {api_url}/docs)   UI: http://{host}:{ui_port}", err=True)
    else:
        typer.echo(f"API: {api_url} (docs at {api_url}/docs); the Streamlit app (longrag/ui/app.py) is absent, "
                   "so only the API runs", err=True)

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    while not stopping:
        for name, proc in children.items():
            if proc.poll() is not None:
                typer.echo(f"{name} exited with {proc.returncode}; stopping the others", err=True)
                code, stopping = proc.returncode or 1, True
                break
        time.sleep(0.5)
    for proc in children.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in children.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
    raise typer.Exit(code=code)


if __name__ == "__main__":
    app()
