"""Hardened readers for every file this project takes from outside: data pickles, JSON and
YAML configs, torch checkpoints; this front keeps every name callers import from ucrn.safeload."""

import os as os  # tests patch os.open through this module (S.os), as before the split

from ucrn.safeload.checkpoints import MAX_CHECKPOINT_BYTES, load_checkpoint
from ucrn.safeload.checkpoints import _torch_reason as _torch_reason
from ucrn.safeload.files import SafeLoadError
from ucrn.safeload.pickles import MAX_ITEMS, load_pickle
from ucrn.safeload.pickles import PICKLE_MAX_DEPTH as PICKLE_MAX_DEPTH
from ucrn.safeload.pickles import PICKLE_SLACK_BYTES as PICKLE_SLACK_BYTES
from ucrn.safeload.pickles import _Reader as _Reader
from ucrn.safeload.pickles import _Unpickler as _Unpickler
from ucrn.safeload.rebuild import _check_dense as _check_dense
from ucrn.safeload.textfiles import (
    MAX_JSON_BYTES,
    MAX_NESTING,
    MAX_YAML_BYTES,
    load_json,
    load_yaml,
)

# The rooms:
# - files.py: SafeLoadError (a ValueError; its message is ONE line that starts with the file,
#   and the flag or role it came from when given, and says what was expected) and opening a
#   file from outside: stat() first, so a FIFO is refused without blocking; size caps;
# - pickles.py: the restricted, budgeted unpickler (load_pickle) for the data pickles from
#   third-party mirrors: its own opcode table, reads checked against the bytes left, arrays
#   backed by bytes the file holds, the result measured before it is returned;
# - rebuild.py: what the globals such a pickle may name build: numpy dtypes, arrays and
#   scalars rebuilt from checked parts, never by numpy's own (unsafe) reconstruction;
# - textfiles.py: JSON and YAML (load_json, load_yaml): size and nesting caps, no YAML
#   anchors/aliases, no tags beyond plain scalars, sequences and mappings;
# - checkpoints.py: torch.load(weights_only=True) only (load_checkpoint), zip entries capped.
# numpy is the only import at module level: yaml and torch are imported on use.
# (_Reader, _Unpickler, _check_dense and _torch_reason are re-exported for the tests.)

__all__ = [
    "MAX_CHECKPOINT_BYTES",
    "MAX_ITEMS",
    "MAX_JSON_BYTES",
    "MAX_NESTING",
    "MAX_YAML_BYTES",
    "SafeLoadError",
    "load_checkpoint",
    "load_json",
    "load_pickle",
    "load_yaml",
]
