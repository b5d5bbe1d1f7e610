import ssdflow  # noqa: F401 - installs the filter for TensorFlow's start-up lines before a worker imports it
