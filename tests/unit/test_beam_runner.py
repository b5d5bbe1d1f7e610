"""Local Beam jobs use every core by default (ssdflow/beam_runner.py local_parallelism)."""

from __future__ import annotations

import pytest

from ssdflow import beam_runner
from ssdflow.beam_runner import MULTI_PROCESS_MIN_FILES, local_parallelism


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.setattr(beam_runner, "usable_cores", lambda: 4)


def test_a_local_job_with_enough_input_gets_a_worker_process_per_core(four_cores):
    flags = ["--runner=DirectRunner"]
    assert local_parallelism(flags, MULTI_PROCESS_MIN_FILES) == [
        "--runner=DirectRunner",
        "--direct_running_mode=multi_processing",
        "--direct_num_workers=4",
    ]
    assert local_parallelism([], 10**6)[-1] == "--direct_num_workers=4"  # no runner named: DirectRunner


@pytest.mark.parametrize(
    "flags, files",
    [
        (["--runner=DirectRunner"], MULTI_PROCESS_MIN_FILES - 1),  # small input: one process starts faster
        (["--runner=DirectRunner", "--direct_num_workers=1"], 10**6),  # the user's choice stands
        (["--runner=DirectRunner", "--direct_running_mode=in_memory"], 10**6),
        (["--runner=DataflowRunner"], 10**6),  # remote runners size their own workers
        (["--runner=PortableRunner", "--job_endpoint=localhost:1"], 10**6),
    ],
)
def test_otherwise_the_flags_are_left_alone(four_cores, flags, files):
    assert local_parallelism(flags, files) == flags


def test_one_core_means_one_process(monkeypatch):
    monkeypatch.setattr(beam_runner, "usable_cores", lambda: 1)
    assert local_parallelism(["--runner=DirectRunner"], 10**6) == ["--runner=DirectRunner"]


def test_multi_process_workers_start_through_ssdflows_quiet_harness(monkeypatch):
    """LocalRunner swaps Beam's worker command by exact string for its pre-started workers
    (ssdflow/patches/worker_pool.py): if a Beam upgrade changed that string, the swap would stop silently
    (the console be noisy again, the workers start late). This builds the job graph a
    multi_processing run hands its workers and checks the swap still finds the command."""
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from ssdflow.patches import worker_pool

    seen = []

    def capture(self, pipeline_proto, options):
        seen.extend(pipeline_proto.components.environments.values())
        raise StopIteration  # the graph is all this test needs; nothing runs

    monkeypatch.setattr(FnApiRunner, "run_via_runner_api", capture)
    options = beam_runner.pipeline_options(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    p = beam_runner.make_pipeline(options)
    started = list(p.runner.workers.waiting)
    assert len(started) == 2  # started with the pipeline, before it is built or run
    _ = p | beam.Create([1]) | beam.Map(lambda x: x)
    with pytest.raises(StopIteration):
        p.run()
    assert [(env.urn, env.payload.decode()) for env in seen] == [(worker_pool.URN, p.runner.workers.id)]
    # The run ended without taking them: they are ended, not left waiting.
    assert p.runner.workers.waiting == () and [proc.returncode for proc in started] == [0, 0]


def test_a_run_in_one_process_starts_no_workers():
    p = beam_runner.make_pipeline(beam_runner.pipeline_options(["--direct_num_workers=1"]))
    assert p.runner.workers.waiting == ()


def test_job_options_parse_the_flags_once_per_view_and_share_the_values(monkeypatch):
    """Beam asks for hundreds of views while building a job; each used to parse the flags anew."""
    import copy

    from apache_beam.options import pipeline_options as po

    options = beam_runner.pipeline_options(["--direct_num_workers=3"])
    parsed, parse = [], po._BeamArgumentParser.parse_known_args
    monkeypatch.setattr(
        po._BeamArgumentParser, "parse_known_args", lambda self, *a, **k: parsed.append(1) or parse(self, *a, **k)
    )
    views = [options.view_as(po.DirectOptions) for _ in range(50)] + [
        options.view_as(po.TypeOptions) for _ in range(50)
    ]
    assert len(parsed) == 2 and views[0] is views[49]
    views[0].direct_num_workers = 5  # a view writes the shared values, as Beam's views do
    assert options.get_all_options(drop_default=True) == {"direct_num_workers": 5}
    twin = copy.deepcopy(options)
    twin.view_as(po.DirectOptions).direct_num_workers = 7
    assert (
        options.view_as(po.DirectOptions).direct_num_workers == 5 and twin.get_all_options()["direct_num_workers"] == 7
    )
