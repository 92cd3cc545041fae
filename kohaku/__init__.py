"""kohaku: danbooru metadata to a trained SDXL anime model, as a reproducible pipeline.

The package is a plain library (no Prefect); `tasks/` and `flows/` wrap it.
"""

__version__ = "0.1.0"
