"""The detector: anchors, box coding, matching, losses, the Keras SSD, training, export, evaluation."""

import ssdflow  # noqa: F401 - before any module here imports TensorFlow: its start-up lines are filtered (ssdflow/patches/quiet.py)
