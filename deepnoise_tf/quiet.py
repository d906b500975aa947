"""Quiet commands: TensorFlow's start-up lines and three known, harmless warnings hidden unless `--verbose`.

Every `python -m deepnoise_tf.<command>` calls `configure` first, before anything imports TensorFlow:
TensorFlow's C++ logging reads `TF_CPP_MIN_LOG_LEVEL` once, when the library loads. What is hidden,
and why it is safe to hide:

- TensorFlow's C++ INFO lines (CPU instruction sets, oneDNN, devices found). Its C++ warnings and
  errors still print: level 1 drops INFO only. Some libraries inside the tensorflow-cpu 2.21 wheel
  log through their own copy of absl and ignore `TF_CPP_MIN_LOG_LEVEL` (absl's "All log messages
  before absl::InitializeLog()" preamble, then oneDNN's INFO line, while `import tensorflow` runs), so
  `configure` imports TensorFlow itself with the process's stderr captured and writes back every
  line except those INFO lines and the preamble (`_is_import_noise`).
- TFDS's "`FeatureConnector.dtype` is deprecated" (absl, up to ten per process): TFDS's own reader
  calls the deprecated property, not this package.
- Keras's "Your input ran out of data" (a UserWarning): validation is one pass over a filtered
  `tf.data` set whose length Keras cannot know, so every evaluation ends by running out (Keras
  `EpochIterator.catch_stop_iteration`). The training stream is endless (`data.training_dataset`).
- Keras's "Can save best model only with <score> available" (a UserWarning): with
  `train.eval_every_epochs` > 1 the epochs between validations carry no score by design
  (`selection.validation_epochs`), and the best checkpoint is chosen among the scored ones.

The warnings are filtered by their message, so every other warning still shows. A
`TF_CPP_MIN_LOG_LEVEL` the user set is kept.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Sequence

VERBOSE_FLAG = "--verbose"
VERBOSE_HELP = "show TensorFlow's start-up lines and the TFDS/Keras warnings hidden by default"
# TensorFlow's C++ log levels: 0 all, 1 no INFO, 2 no WARNING, 3 no ERROR.
_TF_CPP_LEVEL = "1"
_ABSL_MESSAGES = ("FeatureConnector.dtype` is deprecated",)
# Regular expressions matched at the message's start.
_KERAS_MESSAGES = ("Your input ran out of data", "Can save best model only with ")
# absl's C++ line prefix of an INFO record ("I1205 23:25:56.779890 6542 port.cc:153] ..."), and the
# preamble absl prints before its first record when nothing initialised its logging.
_ABSL_INFO_LINE = re.compile(r"^I\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.-]+:\d+\] ")
_ABSL_PREAMBLE = "All log messages before absl::InitializeLog() is called are written to STDERR"


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
    for message in _KERAS_MESSAGES:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)
    absl_logger = logging.getLogger("absl")
    if _drop_known_absl_warnings not in absl_logger.filters:
        absl_logger.addFilter(_drop_known_absl_warnings)
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] != "0" and "tensorflow" not in sys.modules:
        _import_tensorflow_without_info_lines()
    return False


def _is_import_noise(line: str) -> bool:
    """True for an absl C++ INFO record or absl's preamble: what TF_CPP_MIN_LOG_LEVEL >= 1 drops."""
    return bool(_ABSL_INFO_LINE.match(line)) or _ABSL_PREAMBLE in line


def _import_tensorflow_without_info_lines() -> None:
    """`import tensorflow` with file descriptor 2 sent to a temporary file, then every captured line
    but the import noise written back to stderr (warnings and errors included, in order). An import
    that raises writes back everything it printed before the exception propagates."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        failed = True
        try:
            import tensorflow  # noqa: F401

            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", "replace").splitlines(keepends=True)
            kept = [line for line in lines if failed or not _is_import_noise(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
