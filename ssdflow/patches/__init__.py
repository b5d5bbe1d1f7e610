"""Where ssdflow changes the behaviour of the libraries it runs on, kept apart from its own code.

Each patch targets the upstream version in :data:`TARGETS`; ``tests/unit/test_patches.py`` fails
when an installed version leaves them, so that whoever upgrades re-checks the list below (does the
upstream still behave so? does the patch still apply? is it still worth it?) and updates TARGETS.

| module | what it changes | targets | why (docs/benchmarks.md or the module) | retire it when |
| --- | --- | --- | --- | --- |
| ``local_runner`` | ``--runner=DirectRunner`` runs on the FnApiRunner directly, its workers told the job's options | Beam 2.77 | DirectRunner first tries PrismRunner, which downloads a binary at run time (offline: a failed lookup every run); the bare FnApiRunner gives its workers no options | Beam's DirectRunner runs offline without a download and passes options to its workers |
| ``worker_pool``, ``beam_worker`` | ``multi_processing`` workers started with the pipeline, running Beam's harness quietly | Beam 2.77 | each worker's imports left the job's critical path ("Workers started with the pipeline, and no interpreter teardown"); the harness's INFO chatter off the console | the FnApiRunner starts workers ahead of the run, or a local runner that does is the default |
| ``job_options`` | ``PipelineOptions.view_as`` makes each view once | Beam 2.77 | some 600 re-parses of the flags per ingest run, 0.2 s of the driver ("…option views parsed once") | Beam caches views |
| ``s3_clients`` | one boto3 client per process and settings inside Beam's S3 filesystem | Beam 2.77, boto3 1.x | a client per call cost 0.19 s of CPU, more than scoring a small image ("Scoring from S3: one boto3 client per process") | Beam's ``S3FileSystem`` reuses its client |
| ``allocator`` | glibc malloc: two arenas, a fixed 128 KiB mmap threshold, for the ingest CLI's process | glibc 2.x | the local driver is its shuffle service; its peak at 100,000 images fell from 463 to 325 MB ("The driver's malloc settings") | the local runner's shuffle stops passing through the driver |
| ``quiet`` | TensorFlow's C++ start-up lines, TFLite's notices and two Beam warnings kept off the console | TensorFlow 2.21, Beam 2.77 | absl writes them before its logging is initialized, past ``TF_CPP_MIN_LOG_LEVEL`` (tensorflow/tensorflow#100442); Beam warns of BigQuery's client and a memory probe ssdflow never uses | TensorFlow honours ``TF_CPP_MIN_LOG_LEVEL`` for them; Beam logs optional modules at INFO |

Not a patch, but a workaround of the same kind: :func:`ssdflow.beam_runner.worker_filesystems`
gives an in-process worker pool's harness the job's storage options, which Beam 2.77 does not.

This package's ``__init__`` imports nothing: ``import ssdflow`` loads ``quiet`` before anything else.
"""

# The upstream versions the patches were written and measured against: a prefix of the installed
# version (glibc is checked on Linux only).
TARGETS = {"apache-beam": "2.77.", "tensorflow": "2.21.", "boto3": "1.", "glibc": "2."}
