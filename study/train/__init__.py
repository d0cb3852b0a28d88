"""One training run of the Zaremba PTB LSTM, no Ray: the data, the model, clipping, schedules,
saved state, the trainer that ties them together and its command line (cli.py).

    python -m study.train --preset small --data-dir ../shared/data/ptb --threads 2

What the sweep, the bench and users import is listed here; the modules behind it are the wing's own.
"""

from study.train.data import DATA_ENV, Corpus, batchify, cache_dir, load_corpus, num_batches
from study.train.model import LSTMLanguageModel
from study.train.schedules import late_settings
from study.train.state import (
    StateError,
    check_identity,
    decode_state,
    encode_state,
    read_state,
    run_identity,
    save_state,
)
from study.train.trainer import EpochProgress, Trainer, available_cpus, select_device, set_threads

__all__ = [
    "DATA_ENV",
    "Corpus",
    "EpochProgress",
    "LSTMLanguageModel",
    "StateError",
    "Trainer",
    "available_cpus",
    "batchify",
    "cache_dir",
    "check_identity",
    "decode_state",
    "encode_state",
    "late_settings",
    "load_corpus",
    "num_batches",
    "read_state",
    "run_identity",
    "save_state",
    "select_device",
    "set_threads",
]
