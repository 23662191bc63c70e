"""Input helpers shared by the pages."""

from __future__ import annotations

import pytest

from longrag.ui.common import parse_options


def test_parse_options_reads_a_json_object_and_blank_as_none() -> None:
    assert parse_options("") is None and parse_options("   \n") is None
    assert parse_options('{"drafter": "llm", "eta": 20, "tail": 0}') == {"drafter": "llm", "eta": 20, "tail": 0}


@pytest.mark.parametrize("raw, message", [
    ('{"eta": 2', "not valid JSON"),
    ("eta=2", "not valid JSON"),
    ('["eta", 2]', "must be a JSON object"),
    ("20", "must be a JSON object"),
])
def test_parse_options_refuses_what_is_not_a_json_object(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_options(raw)
