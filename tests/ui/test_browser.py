"""The Streamlit app in a real browser: Debian's Chromium driven by Playwright.

A real uvicorn API (``longrag serve``, embedded, tiny decoder, real MiniLM) and the real
Streamlit app (``longrag ui``) run as processes; the browser uploads a document, waits for
ingestion, asks a question and checks the answer and the highlighted evidence.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from longrag.ui.client import LongragClient

pytestmark = [pytest.mark.browser, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("LONGRAG_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOT = REPO / "tests" / "artifacts" / "ui.png"
DOCS_SCREENSHOT = REPO / "docs" / "ui.png"
TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: run `make system-deps` (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                               args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()


def test_upload_ask_and_see_highlighted_evidence(
    browser, ui_server, api: LongragClient, tmp_path: Path, sample_document: str
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    doc_file = tmp_path / "gull-point.txt"
    content = sample_document + "\nThe keeper's cottage at Gull Point still stands above the cove.\n"
    doc_file.write_text(content, encoding="utf-8")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(ui_server.url)
        expect(page.get_by_role("heading", name="Documents", exact=True)).to_be_visible()

        # Upload through the file input and watch the ingestion job to its end.
        page.locator("input[type=file]").first.set_input_files(str(doc_file))
        expect(page.get_by_text("gull-point.txt").first).to_be_visible()
        page.get_by_role("button", name="Upload and index").click()
        expect(page.get_by_text("is ready")).to_be_visible()
        doc = next(d for d in api.documents() if d.filename == "gull-point.txt")
        text = api.document_text(doc.doc_id)
        assert text.strip() == content.strip()

        # Ask on the Ask page, restricted to that document.
        page.get_by_role("link", name="Ask").first.click()
        expect(page.get_by_role("heading", name="Ask", exact=True)).to_be_visible()
        page.get_by_label("Question").fill("How many sailors did Margaret Hale bring back to the shore?")
        page.locator("[data-testid=stMultiSelect]").first.click()
        page.get_by_role("option", name=doc.doc_id[:10]).click()
        page.keyboard.press("Escape")
        # Record every partial answer the page renders (the streamed text ends with a cursor).
        page.evaluate("""() => {
            window.__partials = new Set();
            new MutationObserver(() => {
                for (const el of document.querySelectorAll('[data-testid=stMarkdownContainer]')) {
                    if (el.textContent.endsWith('\u258c')) window.__partials.add(el.textContent);
                }
            }).observe(document.body, {subtree: true, childList: true, characterData: true});
        }""")
        page.get_by_role("button", name="Ask").click()

        mark = page.locator("mark").first
        expect(mark).to_be_visible()
        expect(page.get_by_text("First token")).to_be_visible()
        marks = page.locator("mark")
        for i in range(marks.count()):
            m = marks.nth(i)
            start, end = int(m.get_attribute("data-start")), int(m.get_attribute("data-end"))
            assert m.get_attribute("data-doc") == doc.doc_id
            assert end > start
            assert m.text_content() == text[start:end]  # the exact document text at its offsets
            assert page.get_by_text(f"{start:,}–{end:,}").first.is_visible()
        expect(page.get_by_text("Evidence 1")).to_be_visible()
        partials = page.evaluate("() => [...window.__partials]")
        assert partials, "the answer did not stream (no partial answer was rendered)"

        # Streamlit scrolls inside its own container: a tall viewport shows the whole answer.
        page.set_viewport_size({"width": 1400, "height": 1900})
        page.wait_for_timeout(500)
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT))
        if os.environ.get("LONGRAG_UI_TEST_DECODER"):  # a real model's answer: good for the README
            shutil.copyfile(SCREENSHOT, DOCS_SCREENSHOT)
        page.set_viewport_size({"width": 1400, "height": 1000})

        # The position link opens the Reader with the same span marked.
        page.get_by_role("link", name="Open at position").first.click()
        expect(page.get_by_role("heading", name="Reader", exact=True)).to_be_visible()
        rmark = page.locator("mark").first
        expect(rmark).to_be_visible()
        rs, re_ = int(rmark.get_attribute("data-start")), int(rmark.get_attribute("data-end"))
        assert rmark.text_content() == text[rs:re_]
    finally:
        page.close()
