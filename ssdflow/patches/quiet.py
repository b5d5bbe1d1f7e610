"""TensorFlow's start-up lines and Beam's false alarms, filtered out of the console.

TensorFlow 2.21 writes its C++ start-up lines through absl before absl's logging is initialized,
where ``TF_CPP_MIN_LOG_LEVEL`` does not reach them (tensorflow/tensorflow#100442). On a CPU machine
every process that imports it printed "oneDNN custom operations are on", "Could not find cuda
drivers", the CPU-feature notice and an error line "failed call to cuInit … (303)": noise on a
machine that never asked for a GPU, in the console and in every flow run's log.

``install`` (called by ``import ssdflow``) puts a finder on ``sys.meta_path`` that runs the first
``import tensorflow`` (and the device probe, which logs the cuInit line) with file descriptor 2
going through a filter that drops those lines and forwards everything else as it comes. TensorFlow
is still imported only where code imports it. It also puts :class:`FalseAlarms` on the root logger.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading

NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|oneDNN custom operations are on"
    r"|Could not find cuda drivers on your machine"
    r"|cpu_feature_guard\.cc"
    r"|^To enable the following instructions: .* in other operations, rebuild TensorFlow"
    r"|failed call to cuInit"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
)
# TFLite's: the converter's quantizer reports its settings, and the interpreter announces its CPU
# delegate the first time a process runs a model.
TFLITE_NOISE = re.compile(
    r"^fully_quantize: \d+, inference_type: \d+, input_inference_type"
    r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU"
)


@contextlib.contextmanager
def filtered_stderr(noise: re.Pattern = NOISE):
    """Runs the block with fd 2 going through a pipe; a thread forwards, as they come, the lines that
    ``noise`` does not match (so a crash inside the block still shows what was written before it)."""
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    saved = os.dup(2)

    def forward() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not noise.search(line.decode(errors="replace")):
                    try:
                        os.write(saved, line)
                    except OSError:
                        return

    thread = threading.Thread(target=forward, name="ssdflow-quiet-stderr", daemon=True)
    thread.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # drops the pipe's last write end: the thread reads to the end and stops
        thread.join(timeout=10)
        if not thread.is_alive():
            os.close(saved)


class _QuietLoader:
    """Wraps TensorFlow's loader: its module runs, and its devices are probed, inside ``filtered_stderr``.
    Everything else (resources, is_package, ...) is the wrapped loader's."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        with filtered_stderr():
            self._loader.exec_module(module)
            module.config.list_physical_devices()  # the device probe logs the cuInit line: inside the window
        module.__loader__ = module.__spec__.loader = self._loader


class QuietTensorFlowImport:
    """A meta-path finder: the process's first ``import tensorflow`` goes through ``_QuietLoader``.
    Installed by ``import ssdflow``; TensorFlow is imported only where code asks for it, as before."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _QuietLoader(spec.loader)
                return spec
        return None


class FalseAlarms(logging.Filter):
    """Drops third-party warnings that are false alarms for ssdflow, so that a first run's console
    (and a flow run's log) shows what matters. Each is logged on the root logger by Beam:

    * "apitools not found, and bigquery client libraries are not available…": at import, where
      BigQuery's optional client is not installed; ssdflow never uses BigQuery.
    * "Resource module is not available for current platform…": RunInference's memory probe, once
      per batch on platforms without it; scoring does not depend on it.
    """

    PREFIXES = (
        "apitools not found, and bigquery client libraries",
        "Resource module is not available for current platform",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.PREFIXES)


def install() -> None:
    """Puts the finder first on ``sys.meta_path`` and the false-alarm filter on the root logger (once)."""
    if not any(isinstance(f, QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, QuietTensorFlowImport())
    root = logging.getLogger()
    if not any(isinstance(f, FalseAlarms) for f in root.filters):
        root.addFilter(FalseAlarms())
