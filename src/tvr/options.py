"""Typed options, declared once: a dataclass field holds an option's type, default, allowed values and range.

The config sections that no constructor receives as keyword arguments (``optim``, ``train``, ``evaluation``)
and components whose options are dataclass fields (re-rankers, frame samplers) declare them here-style::

    @dataclass(frozen=True)
    class TrainOptions:
        nonfinite: Literal["stop", "skip"] = "stop"
        checkpoint_every_n_steps: int = option(0, minimum=0, help="also write last.ckpt every N steps")

Everything else derives from the declaration: start-up validation checks each value against its type and
metadata (:func:`tvr.validation.ConfigChecker.typed`), Hydra composes the section's defaults from it
(:func:`defaults_of`, stored by :mod:`tvr.config`), and the code reads the section through
:func:`from_config`, so no default is written twice.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Callable, Literal, Union, get_args, get_origin

_METADATA = "tvr_option"


@dataclass(frozen=True)
class OptionFacts:
    """What validation checks beyond the type: a range, choices (or a function giving them, e.g. a
    registry's names, read when checked), a custom check returning a problem or None, and a help text."""

    minimum: float | None = None
    above: float | None = None
    maximum: float | None = None
    choices: tuple | Callable[[], tuple] | None = None
    check: Callable[[Any], str | None] | None = None
    expected: str = ""  # how the custom check's expectation is shown: "two numbers in [0, 1)"
    help: str = ""

    def allowed(self) -> tuple | None:
        return self.choices() if callable(self.choices) else self.choices


def limits(*, minimum=None, above=None, maximum=None) -> OptionFacts:
    """A range for a constructor argument: ``batch_size: Annotated[int, limits(minimum=1)]``."""
    return OptionFacts(minimum=minimum, above=above, maximum=maximum)


def option(
    default: Any,
    *,
    minimum=None,
    above=None,
    maximum=None,
    choices=None,
    check=None,
    expected: str = "",
    help: str = "",
) -> Any:
    """A dataclass field with its validation facts (mutable defaults are copied per instance)."""
    facts = OptionFacts(minimum, above, maximum, choices, check, expected, help)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata={_METADATA: facts})
    return dataclasses.field(default=default, metadata={_METADATA: facts})


@dataclass(frozen=True)
class OptionSpec:
    """One declared option: its name, default, type (``int``, ``float``, ``bool``, ``str``, ``list``,
    ``dict``), whether null is allowed, its Literal choices and facts."""

    name: str
    default: Any
    kind: type
    nullable: bool
    facts: OptionFacts

    def choices(self) -> tuple | None:
        return self.facts.allowed()


def _kind_of(annotation) -> tuple[type, bool, tuple | None]:
    """(base type, nullable, Literal choices) of an annotation such as ``int | None`` or ``Literal["a", "b"]``."""
    nullable = False
    if get_origin(annotation) in (Union, types.UnionType):
        members = [member for member in get_args(annotation) if member is not type(None)]
        nullable = len(members) < len(get_args(annotation))
        if len(members) > 1:  # bool | str, and the like: the constructor itself sorts the value out
            return object, nullable, None
        annotation = members[0]
    if get_origin(annotation) is Literal:
        values = get_args(annotation)
        return type(values[0]), nullable, values
    origin = get_origin(annotation) or annotation
    if origin is tuple:  # a config gives lists where a signature says tuple
        origin = list
    return (origin if isinstance(origin, type) else object), nullable, None


def _spec(name: str, default: Any, annotation, facts: OptionFacts) -> OptionSpec:
    """An option from its annotation and facts; a ``Literal`` annotation gives the choices unless the facts name
    their own."""
    kind, nullable, literal = _kind_of(annotation)
    if literal is not None and facts.choices is None:
        facts = dataclasses.replace(facts, choices=literal)
    return OptionSpec(name, default, kind, nullable, facts)


@cache
def option_specs(options_class: type) -> tuple[OptionSpec, ...]:
    """The declared options of a dataclass, in declaration order (``ClassVar`` facts excluded)."""
    hints = typing.get_type_hints(options_class)
    specs = []
    for field in dataclasses.fields(options_class):
        if not field.init:
            continue
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        specs.append(_spec(field.name, default, hints[field.name], field.metadata.get(_METADATA, OptionFacts())))
    return tuple(specs)


@cache
def signature_specs(factory: Callable) -> tuple[OptionSpec, ...]:
    """The options a constructor's (or function's) annotations declare: types, ``Literal`` choices and
    ``Annotated[..., limits(...)]`` ranges; arguments without an annotation it can read are left out."""
    target = factory.__init__ if isinstance(factory, type) else factory
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except (NameError, TypeError):  # an annotation naming what only a type checker imports: nothing to derive
        return ()
    specs = []
    for name, parameter in inspect.signature(factory).parameters.items():
        if name not in hints or parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
            continue
        annotation, facts = hints[name], OptionFacts()
        if get_origin(annotation) is Annotated:
            annotation, *extras = get_args(annotation)
            facts = next((extra for extra in extras if isinstance(extra, OptionFacts)), facts)
        default = None if parameter.default is parameter.empty else parameter.default
        specs.append(_spec(name, default, annotation, facts))
    return tuple(specs)


def option_names(options_class: type) -> tuple[str, ...]:
    return tuple(spec.name for spec in option_specs(options_class))


def defaults_of(options_class: type) -> dict[str, Any]:
    """The section's default values, as the config Hydra composes (lists, not tuples)."""
    return {
        spec.name: list(spec.default) if isinstance(spec.default, tuple) else spec.default
        for spec in option_specs(options_class)
    }


def from_config(options_class: type, values: dict | None):
    """The typed options of a config section that validation has passed; keys it does not declare are
    refused (a section from another component, or a typo that validation was bypassed for)."""
    values = dict(values or {})
    unknown = sorted(set(values) - set(option_names(options_class)))
    if unknown:
        raise TypeError(f"{options_class.__name__} has no option {', '.join(unknown)}")
    return options_class(**values)
