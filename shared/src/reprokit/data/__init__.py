"""Data loaders: text corpora (``text``), image datasets and views (``images``, ``augment``),
anomaly-detection datasets (``anomaly``). Each has an offline default every machine has."""
