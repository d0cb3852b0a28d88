"""study: how gradient clipping and learning-rate decay shape the training of the Zaremba PTB LSTM."""

__version__ = "0.2.0"
