"""UCRN's hyperparameter search. From Python (a notebook): `search.run(...)`,
`search.load(path)`, `search.retrain(path, seeds=[...])` and their `SearchResult`
(search/api.py, docs/api.md); from a shell: run_search.py and analyze.py.

Why lazy: `import search` must stay cheap (no torch, Ray or pandas) and the analysis must
import without torch; the API's module loads on first use of one of its names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from search.api import SearchResult, load, retrain, run

__all__ = ["SearchResult", "load", "retrain", "run"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        value = getattr(importlib.import_module("search.api"), name)
        globals()[name] = value  # found directly from now on
        return value
    raise AttributeError(f"module 'search' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
