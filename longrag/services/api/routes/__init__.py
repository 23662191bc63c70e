"""One router per resource, in the order the API lists them."""

from __future__ import annotations

from fastapi import APIRouter

from longrag.services.api.routes import batches, conversations, documents, jobs, ops, query

ROUTERS: tuple[APIRouter, ...] = (documents.router, jobs.router, query.router, conversations.router,
                                  batches.router, ops.router)
