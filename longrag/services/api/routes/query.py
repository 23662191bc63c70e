"""``/v1/modes`` and ``/v1/query``: the answer modes, and answering one question."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from longrag.services.api.answers import answer
from longrag.services.api.schemas import QueryRequest
from longrag.services.api.state import State

router = APIRouter(tags=["query"])


@router.get("/v1/modes")
async def list_modes() -> dict[str, Any]:
    """The modes, and the ``options`` keys each one reads."""
    from longrag.services import modes
    from longrag.services.qa import MODE_OPTIONS, MODES

    modes.load_all()
    return {"modes": sorted(MODES), "options": {m: sorted(MODE_OPTIONS.get(m, ())) for m in sorted(MODES)}}


@router.post("/v1/query")
async def query(body: QueryRequest, st: State) -> Response:
    """Answer a question: answer, evidence (doc id, char start/end, text), timings, stats, mode.

    With ``stream: true`` the answer comes as server-sent events: ``token`` events
    (``{"token"}``), then one ``result`` event with the full JSON (or an ``error`` event). A
    ``reset`` event means a worker died and another restarted the answer.
    """
    return await answer(st, body.payload(), stream=body.stream)
