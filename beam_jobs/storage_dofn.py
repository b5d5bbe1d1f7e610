"""The base of every DoFn of ssdflow's jobs that reads or writes storage, and a function as one."""

from __future__ import annotations

import apache_beam as beam

from ssdflow.beam_runner import worker_filesystems


class StorageDoFn(beam.DoFn):
    """A DoFn that reads or writes storage. ``setup`` gives the worker process's Beam FileSystems the
    job's options (S3 endpoint, region …): a harness that an external worker pool runs in-process
    (PortableRunner with ``--environment_type=EXTERNAL``, as Flink and Spark run Python) is never
    given them (:func:`ssdflow.beam_runner.worker_filesystems`)."""

    def __init__(self, flags=()):
        self.flags = list(flags)

    def setup(self):
        if self.flags:
            worker_filesystems(self.flags)


class StorageCall(StorageDoFn):
    """``fn(element, *args)``'s outputs (an iterable), as a :class:`StorageDoFn`."""

    def __init__(self, flags, fn, *args):
        super().__init__(flags)
        self.fn, self.args = fn, args

    def process(self, element):
        yield from self.fn(element, *self.args)
