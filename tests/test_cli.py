"""The CLI contract: ingest / docs / show / search / ask --json / delete, exit codes on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


TEXT = (
    "Ada Lovelace wrote the first published algorithm in 1843. She worked with Charles Babbage "
    "on the Analytical Engine.\n\nHer notes described how the engine could compute Bernoulli numbers. "
    "Café au lait — naïve résumé ✓."
)


def run(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "longrag", *args], capture_output=True, text=True, env=env, timeout=600)


def test_cli_round_trip(tmp_path: Path, tiny_decoder_dir: Path):
    src = tmp_path / "ada.txt"
    src.write_bytes(TEXT.encode())
    out = run("ingest", str(src), "--json")
    assert out.returncode == 0, out.stderr
    [row] = json.loads(out.stdout)
    doc_id = row["doc_id"]
    assert row["path"] == str(src)
    assert json.loads(run("ingest", str(src), "--json").stdout)[0]["doc_id"] == doc_id  # no-op

    shown = run("show", doc_id)
    assert shown.returncode == 0 and shown.stdout == TEXT

    docs = json.loads(run("docs", "--json").stdout)
    assert [d["doc_id"] for d in docs] == [doc_id]

    hits = json.loads(run("search", "Who wrote the first algorithm?", "--k", "2", "--json").stdout)
    assert 1 <= len(hits) <= 2
    for h in hits:
        assert set(h) == {"doc_id", "start", "end", "text", "score"}
        assert TEXT[h["start"] : h["end"]] == h["text"]

    ans = run("ask", "Who wrote the first algorithm?", "--doc", doc_id, "--json", "--max-new-tokens", "5",
              env_extra={"LONGRAG_DECODER": str(tiny_decoder_dir)})
    assert ans.returncode == 0, ans.stderr
    assert " DEBUG " not in ans.stderr  # libraries' debug logging (bm25s's index build) stays out
    obj = json.loads(ans.stdout)
    assert {"answer", "evidence", "timings", "stats"} <= set(obj)
    assert set(obj["timings"]) >= {"retrieval_ms", "ttft_ms", "total_ms", "tokens_per_s"}
    for ev in obj["evidence"]:
        # page and section extend the contract (null for plain text, which has neither)
        assert set(ev) == {"doc_id", "start", "end", "text", "page", "section"} and TEXT[ev["start"] : ev["end"]] == ev["text"]
        assert ev["page"] is None and ev["section"] is None

    # mode options from the command line, as the REST API's "options"
    env = {"LONGRAG_DECODER": str(tiny_decoder_dir)}
    rapid = run("ask", "Who wrote the first algorithm?", "--doc", doc_id, "--json", "--max-new-tokens", "4",
                "--mode", "rapid", "-o", "drafter=llm", "--option", "eta=20", "-o", "tail=0", env_extra=env)
    assert rapid.returncode == 0, rapid.stderr
    stats = json.loads(rapid.stdout)["stats"]
    assert (stats["eta"], stats["tail"]) == (20, 0) and stats["drafter"] in ("llm", None)
    bad = run("ask", "Who wrote the first algorithm?", "--doc", doc_id, "--mode", "rapid", "-o", "tail=2",
              env_extra=env)
    assert bad.returncode == 2 and "tail" in bad.stderr

    assert run("delete", doc_id).returncode == 0
    assert json.loads(run("docs", "--json").stdout) == []


def test_cli_bad_input_exits_nonzero_and_keeps_store(tmp_path: Path):
    good = tmp_path / "good.txt"
    good.write_text("The store keeps this document safe. It must survive bad input.")
    doc_id = json.loads(run("ingest", str(good), "--json").stdout)[0]["doc_id"]
    cases = {
        "empty.txt": b"",
        "garbage.txt": bytes(range(256)) * 16,
        "latin1.txt": "d\u00e9j\u00e0 vu".encode("latin-1"),
        "sheet.xlsx": b"PK\x03\x04",
    }
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        res = run("ingest", str(p))
        assert res.returncode != 0 and "error" in res.stderr, name
    big = tmp_path / "big.txt"
    big.write_text("word " * 1000)
    res = run("ingest", str(big), env_extra={"LONGRAG_MAX_FILE_BYTES": "1000"})
    assert res.returncode != 0 and "limit" in res.stderr
    assert run("ingest", str(tmp_path / "missing.txt")).returncode != 0
    for args in (["show", "nope"], ["delete", "nope"], ["search", "x", "--doc", "nope"], ["ask", "  "],
                 ["search", "   "], ["search", "store", "--link-hop", "-1"], ["ask", "store", "--option", "eta"],
                 ["ask", "store", "--mode", "rapid", "-o", "etaa=20"]):
        res = run(*args)
        assert res.returncode != 0 and "error" in res.stderr, args
    docs = json.loads(run("docs", "--json").stdout)
    assert [d["doc_id"] for d in docs] == [doc_id]
    assert run("show", doc_id).stdout == good.read_text()


def test_cli_chat_rewrites_follow_ups_and_stores_the_conversation(tmp_path: Path, tiny_decoder_dir: Path):
    src = tmp_path / "ada.txt"
    src.write_bytes(TEXT.encode())
    doc_id = json.loads(run("ingest", str(src), "--json").stdout)[0]["doc_id"]
    env = {"LONGRAG_DECODER": str(tiny_decoder_dir), "LONGRAG_MAX_NEW_TOKENS": "4"}
    proc = subprocess.run([sys.executable, "-m", "longrag", "chat", "--doc", doc_id, "--json"], capture_output=True,
                          text=True, timeout=600, env={**os.environ, **env},
                          input="What did Ada Lovelace publish?\nWhat did she write?\n\nnot asked\n")
    assert proc.returncode == 0, proc.stderr
    head, *answers = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(answers) == 2  # the empty line ends the chat
    assert [a["stats"]["turn"] for a in answers] == [0, 1]
    assert answers[1]["stats"]["standalone_question"] == "What did Ada Lovelace write?"
    for a in answers:
        assert all(TEXT[e["start"]:e["end"]] == e["text"] for e in a["evidence"])
    # the conversation goes on where it stopped, with its history
    more = subprocess.run([sys.executable, "-m", "longrag", "chat", "--conversation", head["conversation_id"], "--json"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, **env},
                          input="When did she publish it?\n")
    last = json.loads(more.stdout.splitlines()[-1])
    assert last["stats"]["turn"] == 2 and last["stats"]["standalone_question"].startswith("When did Ada Lovelace")
    bad = run("chat", "--conversation", "nope")
    assert bad.returncode == 2 and "no conversation" in bad.stderr


def test_cli_migrate_copies_the_store_to_postgresql_and_bad_urls_stop_servers(tmp_path: Path, postgres):
    src = tmp_path / "ada.txt"
    src.write_bytes(TEXT.encode())
    assert run("ingest", str(src), "--json").returncode == 0
    [doc] = json.loads(run("docs", "--json").stdout)
    source = f"sqlite:///{os.environ['LONGRAG_DATA_DIR']}/longrag.sqlite3"
    target = postgres.create_database()
    out = run("migrate", "--from", source, "--to", target, "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["verified"] and report["copied_documents"] == 1 and "***" not in report["to"]
    assert report["counts"]["chunks"]["source"] == report["counts"]["chunks"]["target"] > 0
    again = json.loads(run("migrate", "--from", source, "--to", target, "--json").stdout)
    assert (again["copied_documents"], again["skipped_documents"], again["verified"]) == (0, 1, True)
    # the same store read through PostgreSQL by a host with an empty data dir of its own
    other = {"LONGRAG_DATABASE_URL": target, "LONGRAG_DATA_DIR": str(tmp_path / "other-host")}
    assert run("show", doc["doc_id"], env_extra=other).stdout == TEXT
    upgraded = json.loads(run("migrate", "--json", env_extra=other).stdout)
    assert upgraded["schema_version"] == upgraded["latest"]
    for command in (["serve", "--port", "1"], ["worker"]):  # a wrong password stops a server at start
        bad = run(*command, env_extra={"LONGRAG_DATABASE_URL": postgres.url(user="secret", password="wrong"),
                                       "LONGRAG_BROKER_URL": "redis://127.0.0.1:1/0"})
        assert bad.returncode == 2 and "cannot connect" in bad.stderr and "wrong" not in bad.stderr, bad.stderr
    bad = run("migrate", "--from", source, "--to", "mysql://x/y")
    assert bad.returncode == 2 and "scheme" in bad.stderr
