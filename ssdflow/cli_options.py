"""CLI options generated from the jobs' pydantic configs.

Every field of IngestConfig, TrainConfig and ScoreConfig is an option of its subcommand, with the
field's name (``val_fraction`` → ``--val-fraction``), default and description, so the CLI, the
Prefect run form and the tests cannot drift apart: a setting added to a config is on the CLI too.
Bounds are not repeated here: the config validates, and a refusal names the option.
"""

from __future__ import annotations

import enum
import inspect
import types
import typing
from typing import Any, Callable, Literal

import typer
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from ssdflow.config import BeamOptions

PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def _value_hint(self, ctx):
    """What the help's type column shows: nothing for a flag (Typer 0.29 shows ``<bool>`` on flags
    that take no value, ``--help`` included), ``<str>…`` for an option that may be repeated."""
    if self.is_flag or self.count:
        return None
    shown = _typer_display_type(self, ctx)
    if getattr(self, "multiple", False) and shown and shown.startswith("<list["):
        return "<" + shown[len("<list[") : -2] + ">… (repeat the option)"
    return shown


_typer_display_type = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = _value_hint


def fail(message: str) -> typing.NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def build_config(cls: type[BaseModel], **values):
    """``cls(**values)``, or exit 2 with every refused value named by its option."""
    try:
        return cls(**values)
    except ValidationError as e:
        # A model-level error (no field in its location) is about the options as a whole.
        lines = [
            (f"{option_name(str(err['loc'][0]))}{''.join(f'[{p}]' for p in err['loc'][1:])}: " if err["loc"] else "")
            + err["msg"].removeprefix("Value error, ")
            for err in e.errors()
        ]
        fail(lines[0] if len(lines) == 1 else "invalid options:\n  " + "\n  ".join(lines))


def _plain(annotation) -> Any:
    """The type Typer parses: Optional and Annotated metadata (the config's validators) removed."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _plain(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [
            a
            for a in typing.get_args(annotation)
            if (typing.get_args(a)[0] if typing.get_origin(a) is typing.Annotated else a) is not type(None)
        ]
        if len(args) == 1:
            return _plain(args[0])

    if typing.get_origin(annotation) is list:
        return list[_plain(typing.get_args(annotation)[0])]
    return annotation


def _option(name: str, field) -> tuple[Any, Any, Callable[[Any], Any]]:
    """(annotation, typer.Option, converter from the parsed value to the field's) of one field."""
    annotation = _plain(field.annotation)
    if field.default is not PydanticUndefined:
        default = field.default
    elif field.default_factory is not None:
        default = field.default_factory()
    else:
        default = ...
    convert = lambda value: value  # noqa: E731
    if typing.get_origin(annotation) is Literal and not all(isinstance(v, str) for v in typing.get_args(annotation)):
        # Typer offers string choices; the field's own values (8, 16) come back by their spelling.
        choices = {str(v): v for v in typing.get_args(annotation)}
        annotation = Literal[tuple(choices)]
        default = default if default in (None, ...) else str(default)
        convert = lambda value: value if value is None else choices[value]  # noqa: E731
    decls = [option_name(name)]
    if annotation is bool and default is True:  # on by default: --no-NAME turns it off; off by default: a plain flag
        decls = [f"{option_name(name)}/--no-{name.replace('_', '-')}"]
    kind = typing.Optional[annotation] if default is None else annotation
    case_insensitive = isinstance(annotation, type) and issubclass(annotation, enum.Enum)
    # A float default shown as typed (1/3 would read 0.3333333333333333).
    shown = f"{default:.4g}" if isinstance(default, float) and f"{default:.4g}" != repr(default) else True
    option = typer.Option(
        default, *decls, help=field.description, case_sensitive=not case_insensitive, show_default=shown
    )
    return kind, option, convert


def config_command(
    app: typer.Typer,
    cls: type[BaseModel],
    *,
    name: str | None = None,
    beam: bool = False,
    storage: bool = False,
    overrides: dict[str, tuple[Any, Any, Callable[[Any], Any]]] | None = None,
):
    """Registers the decorated ``body(cfg)`` as a subcommand whose options are ``cls``'s fields.

    ``beam``: options the command does not know are Beam pipeline options and go to ``beam_args``;
    ``storage``: they are object-store options (``--s3_endpoint_url=…``) and go to ``storage_args``
    (the config checks either). ``overrides``: field → (annotation, typer.Option, converter) where
    the CLI spells a field differently (e.g. a comma-separated list).
    """
    overrides = overrides or {}
    extra = "beam_args" if beam else "storage_args" if storage else None
    fields = {n: f for n, f in cls.model_fields.items() if n != extra}
    # Required options first, then the job's own in the config's order, then where it runs (--runner).
    inherited = set(BeamOptions.model_fields) if beam else set()
    ordered = sorted(fields, key=lambda n: (not fields[n].is_required(), n in inherited))
    specs = {n: overrides.get(n) or _option(n, fields[n]) for n in ordered}

    def register(body: Callable[[BaseModel], None]):
        def command(**kwargs):
            ctx = kwargs.pop("ctx", None)
            values = {n: specs[n][2](kwargs[n]) for n in specs}
            if extra:
                values[extra] = list(ctx.args)
            body(build_config(cls, **values))

        params = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)] if extra else []
        params += [
            inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
            for n, (kind, option, _) in specs.items()
        ]
        command.__signature__ = inspect.Signature(params)
        command.__doc__ = body.__doc__
        command.__name__ = name or body.__name__
        app.command(name=name or body.__name__, context_settings=PASS_THROUGH if extra else None)(command)
        return body

    return register
