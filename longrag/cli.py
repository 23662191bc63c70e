"""The ``longrag`` command line: ingest, docs, show, delete, search, ask (and the servers)."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer

from longrag.errors import LongragError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Document QA over long documents.")
log = logging.getLogger("longrag.cli")


def _fail(exc: LongragError) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=2)


def _emit(obj, as_json: bool, human) -> None:
    if as_json:
        typer.echo(json.dumps(obj, ensure_ascii=False, indent=None))
    else:
        human(obj)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress to stderr.")] = False) -> None:
    from longrag.services.runtime import configure_logging

    configure_logging(logging.INFO if verbose else logging.WARNING)


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files to ingest (.txt .md .html .pdf).")],
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
) -> None:
    """Search chunks; prints doc id, offsets, score and text."""
    from longrag.services.runtime import get_corpus

    try:
        hits = get_corpus().search(query, k=k, doc_ids=doc)
    except LongragError as exc:
        _fail(exc)
    rows = [{"doc_id": h.doc_id, "start": h.start, "end": h.end, "text": h.text, "score": round(h.score, 6)} for h in hits]
    _emit(rows, as_json, lambda rs: [typer.echo(
        f"{r['score']:.3f}  {r['doc_id']}[{r['start']}:{r['end']}]  {r['text'][:160]!r}") for r in rs])


@app.command()
def ask(
    question: str,
    doc: Annotated[Optional[list[str]], typer.Option("--doc", help="Restrict to this document id (repeatable).")] = None,
    mode: Annotated[str, typer.Option("--mode", help="plain | full (later: cfic, rapid, refrag).")] = "plain",
    k: Annotated[Optional[int], typer.Option("--k", help="Passages to retrieve.")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    stream: Annotated[bool, typer.Option("--stream/--no-stream", help="Print tokens as they come (text output).")] = True,
) -> None:
    """Answer a question with evidence (doc id, char offsets, exact text) and timings."""
    from longrag.services.qa import Question
    from longrag.services.runtime import get_pipeline

    pipe = get_pipeline()
    on_token = None
    if stream and not as_json:
        def on_token(piece: str) -> None:
            sys.stdout.write(piece)
            sys.stdout.flush()
    try:
        answer = pipe.ask(Question(question, doc_ids=doc, mode=mode, k=k, max_new_tokens=max_new_tokens), on_token)
    except LongragError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(answer.to_dict(), ensure_ascii=False))
        return
    if on_token is None:
        typer.echo(answer.answer)
    else:
        typer.echo("")
    for ev in answer.evidence:
        typer.echo(f"  [{ev.doc_id} {ev.start}:{ev.end}] {ev.text[:200]!r}")
    t = answer.timings
    typer.echo(f"  retrieval {t['retrieval_ms']:.0f} ms, first token {t['ttft_ms']:.0f} ms, "
               f"total {t['total_ms']:.0f} ms, {t['tokens_per_s']:.1f} tokens/s")


@app.command("prepare-models")
def prepare_models(
    names: Annotated[Optional[list[str]], typer.Argument(help="Registry names (default: all bundled).")] = None,
) -> None:
    """Verify the bundled models (SHA-256) and build the safetensors caches once."""
    from longrag.models.registry import BUNDLED, resolve

    for name in names or list(BUNDLED):
        try:
            location, _ = resolve(name)
        except LongragError as exc:
            _fail(exc)
        typer.echo(f"{name}: {location}")


if __name__ == "__main__":
    app()
