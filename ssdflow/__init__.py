"""ssdflow: keep an SSD object detector fresh on your own images (Beam ingest and scoring, Keras
training, Prefect orchestration)."""

from importlib import metadata

try:
    __version__ = metadata.version("ssdflow")
except metadata.PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"

from ssdflow.patches import quiet

quiet.install()  # TensorFlow's C++ start-up lines and Beam's false alarms stay out of the console (ssdflow/patches/quiet.py)
