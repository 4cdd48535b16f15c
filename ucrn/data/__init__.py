"""Loading feature files (MulT's pickles, MMSA's pickles, a folder of .npz) and making
synthetic data like them; this front keeps every name callers import from ucrn.data."""

from ucrn.data.dataset import (
    DATASET_ALIASES,
    DATASET_TASK,
    DATASETS,
    FORMATS,
    IEMOCAP_LABEL_SHAPE,
    LABEL_RANGE,
    LABEL_RANGES,
    MODALITIES,
    SPLITS,
    TARGETS,
    TASKS,
    MultData,
    Split,
    canonical_dataset,
)
from ucrn.data.layout import LAYOUTS, Layout, from_raw
from ucrn.data.load import Resolved, load_dataset, resolve_dataset
from ucrn.data.mmsa import MMSA_DIRS, pickle_layout
from ucrn.data.mult import data_file_name, load_mult_pickle, resolve_data_file, write_mult_pickle
from ucrn.data.npz import NPZ_FILES, read_npz_folder, read_npz_split, write_npz_folder
from ucrn.data.synthetic import LABEL_MODELS, PRESETS, make_synthetic, preset_name
from ucrn.errors import DataError

# The rooms, one per thing a reader looks for:
# - dataset.py: the names every layout shares, and Split / MultData (what a load returns);
# - layout.py: the one validator (from_raw) every input goes through, and Layout / LAYOUTS,
#   which key of a split holds what in each format;
# - mult.py: MulT's pickles (file names, the restricted-unpickler reader, the writer);
# - mmsa.py: MMSA's pickles (told from MulT's by their keys; their folders);
# - npz.py: the own-features folder of train/valid/test.npz (checked reader, writer);
# - synthetic.py: PRESETS and the seeded generator whose labels reward fusion;
# - load.py: which dataset and file a --data_path means, and load_dataset, the entry point.
#
# The real files are pickles from third-party mirrors, so they are read with the restricted
# unpickler of ucrn.safeload; .npz files with ``allow_pickle=False``. numpy only: no torch,
# no Ray, so it can be imported anywhere cheaply. Submodules import each other directly,
# never this front.

__all__ = [
    "DATASETS",
    "DATASET_ALIASES",
    "DATASET_TASK",
    "FORMATS",
    "IEMOCAP_LABEL_SHAPE",
    "LABEL_RANGE",
    "LABEL_RANGES",
    "LAYOUTS",
    "MMSA_DIRS",
    "MODALITIES",
    "NPZ_FILES",
    "LABEL_MODELS",
    "PRESETS",
    "SPLITS",
    "TARGETS",
    "TASKS",
    "DataError",
    "Layout",
    "MultData",
    "Resolved",
    "Split",
    "canonical_dataset",
    "data_file_name",
    "from_raw",
    "load_dataset",
    "load_mult_pickle",
    "make_synthetic",
    "pickle_layout",
    "preset_name",
    "read_npz_folder",
    "read_npz_split",
    "resolve_data_file",
    "resolve_dataset",
    "write_mult_pickle",
    "write_npz_folder",
]
