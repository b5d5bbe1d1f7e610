"""Beam's PipelineOptions, each options class's view made once."""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions


class JobOptions(PipelineOptions):
    """PipelineOptions whose views are made once per options class.

    Beam asks the pipeline's options for a view (``view_as``) some 600 times while it builds and runs
    an ingest job, and each call parses the flags again with a fresh argparse parser: 0.2 s of the
    driver's time before the first stage. A view holds no option values of its own (it reads and
    writes the dict it shares with these options), so the first view of a class serves every later
    call. Defines no options: Beam's parsers and ``get_all_options`` see the same set as before."""

    def view_as(self, cls):
        views = self.__dict__.setdefault("_views", {})  # not through __setattr__, which takes options only
        if cls not in views:
            views[cls] = super().view_as(cls)
        return views[cls]
