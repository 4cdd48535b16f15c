"""The data a search (search/driver.py) or a re-training (search/retrain.py) runs on: what a
given --data-path means, and the dataset loaded once on the driver (a problem is one line)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from search.flags import Flags
from ucrn.config import data_args
from ucrn.data import MultData, load_dataset, resolve_dataset
from ucrn.errors import UsageError


def with_data_path(fl: Flags) -> Flags:
    """A given --data-path is never ignored: without --dataset, the dataset is read off the
    file names there (and said)."""
    if fl.data_path is None:
        return fl
    try:
        r = resolve_dataset(fl.dataset, fl.data_path, fl.aligned, fl.data_format)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if r.note:
        print(r.note, flush=True)
    return replace(fl, dataset=r.dataset, aligned=r.aligned, data_path=str(r.path),
                   data_format=r.format)


def load_data(config: dict[str, Any]) -> MultData:
    """The dataset of a trial config, once, on the driver; a data problem is a usage
    error (one line)."""
    try:
        data = load_dataset(**data_args(config))
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(f"data: {data.summary()}", flush=True)
    return data
