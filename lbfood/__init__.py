"""lbfood: local background feature fine-tuning (LFF) for out-of-distribution detection.

Importing lbfood is cheap: torch is imported only by the engine modules that need it.
"""

__version__ = "0.1.0"

# Run folders record this; a run written by another format version is refused with a clear message.
RUN_FORMAT = 1
