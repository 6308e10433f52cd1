"""reprokit: the thin layer shared by the paper-repros packages.

Only what two or more paper packages use lives here:

- ``reprokit.runtime``: accelerator and precision choice, threads, seeding, environment capture.
- ``reprokit.config``: dataclass configs loaded from YAML with ``key=value`` overrides.
- ``reprokit.runs``: the run directory ``runs/<package>/<run>/`` and its metrics files.
- ``reprokit.report``: figures, seed summaries, computed verdicts and ``report.md``.
- ``reprokit.data``: text corpora, image datasets and augmentations, anomaly-detection datasets.
- ``reprokit.evaluation``: representation evaluators (weighted kNN, linear probe, collapse monitors).
"""

from reprokit.errors import ConfigError, DatasetError, OfflineError, ReprokitError

__all__ = ["ConfigError", "DatasetError", "OfflineError", "ReprokitError"]
__version__ = "0.1.0"
