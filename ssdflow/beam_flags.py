"""Which pass-through arguments Beam knows: a misspelt option must fail, not vanish.

The CLI hands every option it does not define to Beam, and Beam drops what it does not know (it
logs "Discarding unparseable args" at best), so ``--val-fracton 0.5`` used to run with the default
val fraction and exit 0. ``check`` refuses, with a suggestion:

* any flag that is a near miss of one of the job's own options (whatever the runner);
* on the local runners (DirectRunner, PrismRunner), any flag no Beam options class defines.

Portable runners (Flink, Spark, PortableRunner, Dataflow) forward unknown flags to the SDK-independent
job service, where the Java side may define them, so there they pass through.
"""

from __future__ import annotations

import difflib
import functools

LOCAL_RUNNERS = {"directrunner", "direct", "prismrunner", "prism", "interactiverunner"}


@functools.lru_cache(maxsize=1)
def _beam_parser():
    """An argparse parser of every option Beam's PipelineOptions classes define, assembled as Beam's
    own ``PipelineOptions.get_all_options`` does (each subclass once, by name)."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    subset: dict[str, type] = {}
    for cls in PipelineOptions.__subclasses__():
        subset.setdefault(str(cls), cls)
    for cls in subset.values():
        cls._add_argparse_args(parser)  # noqa: SLF001 - Beam's own way to assemble its parser
    return parser


@functools.lru_cache(maxsize=1)
def beam_option_names() -> tuple[str, ...]:
    return tuple(sorted(s for action in _beam_parser()._actions for s in action.option_strings if s.startswith("--")))


def unknown_flags(args: list[str]) -> list[str]:
    """The arguments of ``args`` that no Beam options class parses (flags and stray values)."""
    _, unknown = _beam_parser().parse_known_args(list(args))
    return unknown


def check(args: list[str], runner: str, own_options: list[str]) -> None:
    """Raises ValueError naming each refused argument and the option it probably meant."""
    unknown = unknown_flags(args)
    if not unknown:
        return
    local = runner.lower() in LOCAL_RUNNERS
    problems, previous_flag = [], False
    for arg in unknown:
        if not arg.startswith("-"):
            if local and not previous_flag:  # a value right after an unknown flag is that flag's
                problems.append(f"unexpected argument {arg!r} (a value without its option?)")
            previous_flag = False
            continue
        previous_flag = "=" not in arg
        flag = arg.split("=", 1)[0]
        own = difflib.get_close_matches(flag, own_options, n=1, cutoff=0.8)
        if own:
            problems.append(f"unknown option {flag} (did you mean {own[0]}?)")
        elif local:
            near = difflib.get_close_matches(flag, list(own_options) + list(beam_option_names()), n=1, cutoff=0.75)
            hint = (
                f" (did you mean {near[0]}?)" if near else " (neither an option of this job nor a Beam pipeline option)"
            )
            problems.append(f"unknown option {flag}{hint}")
    if problems:
        raise ValueError("; ".join(problems))


# The options classes that configure Beam's filesystems (object-store endpoints, regions, keys).
STORAGE_OPTION_CLASSES = ("S3Options", "GoogleCloudOptions", "AzureOptions", "HadoopFileSystemOptions")


@functools.lru_cache(maxsize=1)
def _storage_parser():
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in {
        c.__name__: c for c in PipelineOptions.__subclasses__() if c.__name__ in STORAGE_OPTION_CLASSES
    }.values():
        cls._add_argparse_args(parser)  # noqa: SLF001 - Beam's own way to assemble its parser
    return parser


def check_storage(args: list[str]) -> None:
    """Raises ValueError naming each argument that is not an option of Beam's filesystems
    (``--s3_endpoint_url=…``, ``--s3_region_name=…``, ``--project=…``), with the nearest one."""
    _, unknown = _storage_parser().parse_known_args(list(args))
    names = sorted(s for a in _storage_parser()._actions for s in a.option_strings if s.startswith("--"))
    problems = []
    for arg in unknown:
        flag = arg.split("=", 1)[0]
        near = difflib.get_close_matches(flag, names, n=1, cutoff=0.75)
        problems.append(
            f"unknown option {flag}"
            + (
                f" (did you mean {near[0]}?)"
                if near
                else " (only object-store options, such as --s3_endpoint_url=URL, are taken here)"
            )
        )
    if problems:
        raise ValueError("; ".join(problems))


def storage_flags(args: list[str]) -> list[str]:
    """The arguments of a Beam job's ``args`` that configure its filesystems (``--flag=value`` or
    ``--flag value``), for the steps of the same run that touch storage outside Beam (training,
    the registry)."""
    parser = _storage_parser()
    takes_value = {s: a.nargs != 0 for a in parser._actions for s in a.option_strings}
    picked, args = [], list(args)
    for i, arg in enumerate(args):
        flag = arg.split("=", 1)[0]
        if flag in takes_value:
            picked.append(arg)
            if "=" not in arg and takes_value[flag] and i + 1 < len(args):
                picked.append(args[i + 1])
    return picked
