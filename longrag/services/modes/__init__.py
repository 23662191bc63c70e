"""QA modes beyond ``plain`` and ``full``: each module registers itself with
:func:`longrag.services.qa.register_mode` on import. Add one import line per mode."""

from __future__ import annotations

import importlib
import logging

log = logging.getLogger(__name__)

MODE_MODULES: list[str] = [
    "longrag.services.modes.cfic",
    "longrag.services.modes.rapid",
    "longrag.services.modes.refrag",
]


def load_all() -> None:
    for name in MODE_MODULES:
        importlib.import_module(name)
