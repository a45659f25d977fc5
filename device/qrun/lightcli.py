"""Typer commands that parse simple options without importing pydantic.

Recent typer versions coerce every option value through a pydantic
TypeAdapter; importing pydantic costs a few hundred ms, more than a whole
classification on a Pi. `LightCommand` and `LightGroup` give bool, str, int,
float and Path options (also Optional) a plain conversion instead. They touch
typer internals (a parameter's `type_descriptor` and `_runtime_param`) only
where present: with a typer that lacks them, commands behave the same, slower.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Optional

import typer
import typer.core

SIMPLE_TYPES = (bool, str, int, float, Path)


class LightCoercion:
    """Turns a str/int/float/Path option value into its type without typer's pydantic adapter.

    Recent typer versions validate every non-flag value through pydantic, whose
    import costs a few hundred ms: more than the classification itself on a Pi.
    """

    def __init__(self, kind: type):
        self.kind = kind

    def coerce(self, value, param, ctx):
        if value is None or isinstance(value, self.kind):
            return value
        if self.kind is bool:  # flags arrive as bools; anything else is not ours to guess
            raise typer.BadParameter(f"'{value}' is not a flag value.", ctx=ctx, param=param)
        try:
            return self.kind(value)
        except (TypeError, ValueError):
            raise typer.BadParameter(f"'{value}' is not a valid {self.kind.__name__}.",
                                     ctx=ctx, param=param) from None


def simple_type(annotation) -> Optional[type]:
    """bool, str, int, float or Path, also inside Optional[...]; None for anything else."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union and len(args) == 1:
        annotation = args[0]
    return annotation if annotation in SIMPLE_TYPES else None


def lighten(params: list) -> list:
    """Give each simple-typed typer parameter a `LightCoercion` (typer internals, used if present)."""
    for param in params:
        descriptor = getattr(param, "type_descriptor", None)
        kind = simple_type(getattr(descriptor, "annotation", None))
        if kind is not None and getattr(param, "_runtime_param", False) is None:
            param._runtime_param = LightCoercion(kind)
    return params


class LightCommand(typer.core.TyperCommand):
    """A typer command whose options skip typer's pydantic coercion (see `LightCoercion`)."""

    def get_params(self, ctx):
        return lighten(super().get_params(ctx))


class LightGroup(typer.core.TyperGroup):
    """The qrun group, light in the same way as `LightCommand`."""

    def get_params(self, ctx):
        return lighten(super().get_params(ctx))
