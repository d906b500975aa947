"""Quiet commands: TensorFlow's start-up lines and two known, harmless warnings hidden unless `--verbose`.

Every `python -m deepnoise_tf.<command>` calls `configure` first, before anything imports TensorFlow:
TensorFlow's C++ logging reads `TF_CPP_MIN_LOG_LEVEL` once, when the library loads. What is hidden,
and why it is safe to hide:

- TensorFlow's C++ INFO lines (CPU instruction sets, oneDNN, devices found). Its C++ warnings and
  errors still print: level 1 drops INFO only.
- TFDS's "`FeatureConnector.dtype` is deprecated" (absl, up to ten per process): TFDS's own reader
  calls the deprecated property, not this package.
- Keras's "Your input ran out of data" (a UserWarning): validation is one pass over a filtered
  `tf.data` set whose length Keras cannot know, so every evaluation ends by running out (Keras
  `EpochIterator.catch_stop_iteration`). The training stream is endless (`data.training_dataset`).

Both warnings are filtered by their message, so every other warning still shows. A
`TF_CPP_MIN_LOG_LEVEL` the user set is kept.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence

VERBOSE_FLAG = "--verbose"
VERBOSE_HELP = "show TensorFlow's start-up lines and the TFDS/Keras warnings hidden by default"
# TensorFlow's C++ log levels: 0 all, 1 no INFO, 2 no WARNING, 3 no ERROR.
_TF_CPP_LEVEL = "1"
_ABSL_MESSAGES = ("FeatureConnector.dtype` is deprecated",)
_KERAS_MESSAGE = "Your input ran out of data"  # a regular expression matched at the message's start


def _drop_known_absl_warnings(record: logging.LogRecord) -> bool:
    """A logging filter: False (drop) for the absl records in `_ABSL_MESSAGES`."""
    message = record.getMessage()
    return not any(text in message for text in _ABSL_MESSAGES)


def configure(argv: Sequence[str]) -> bool:
    """Hides the noise described above unless `argv` holds `--verbose`; returns whether verbose.

    Reads `argv` itself rather than parsed arguments: parsing a training command validates its
    config, which imports Keras, hence TensorFlow, too late for `TF_CPP_MIN_LOG_LEVEL`. Calling it
    twice adds nothing twice.
    """
    verbose = VERBOSE_FLAG in argv
    if verbose:
        return True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", _TF_CPP_LEVEL)
    warnings.filterwarnings("ignore", message=_KERAS_MESSAGE, category=UserWarning)
    absl_logger = logging.getLogger("absl")
    if _drop_known_absl_warnings not in absl_logger.filters:
        absl_logger.addFilter(_drop_known_absl_warnings)
    return False
