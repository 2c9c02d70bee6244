"""Collecting every problem of a config: the generic checks start-up validation is written with.

A :class:`Section` is a resolved config block with its dotted path, so every problem names its full key;
a :class:`ConfigChecker` collects problems one line per key and raises them together. The checks read
what components declare — typed option dataclasses (:mod:`tvr.options`), constructor signatures and
their annotations, registries — so a new component or option needs no check written for it. The rules
for tvr's own configs are in :mod:`tvr.validation`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tvr.errors import ConfigError, UserInputError
from tvr.options import option_specs, signature_specs
from tvr.registry import Registry


class InvalidConfigError(ConfigError):
    """Several config values that cannot work, reported together one line per key.

    ``key`` is the first problem's key (as for a single :class:`ConfigError`); ``problems`` holds them all.
    """

    def __init__(self, problems: list[ConfigError]) -> None:
        # ConfigError formats a single key; this message is the list of their messages instead.
        UserInputError.__init__(
            self, f"{len(problems)} config values cannot work:\n" + "\n".join(f"  {p}" for p in problems)
        )
        self.key = problems[0].key
        self.problems = problems


@dataclass(frozen=True)
class Section:
    """A resolved config block and its dotted path, so that every problem names the full key."""

    path: str
    values: dict

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def child(self, name: str) -> Section:
        value = self.values.get(name)
        return Section(self.key(name), value if isinstance(value, dict) else {})

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def get(self, name: str) -> Any:
        return self.values.get(name)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _missing_keys(section: Section):
    """Keys left at OmegaConf's ``???`` (to_container keeps the marker instead of raising)."""
    for name, value in section.values.items():
        if value == MISSING:
            yield section.key(name)
        elif isinstance(value, dict):
            yield from _missing_keys(section.child(name))


def _bounds_text(minimum, above, maximum) -> str:
    """The bounds a number must respect, as shown to the user: ' >= 1', ' > 0', ' in [0, 1]'."""
    if maximum is not None:
        lower = f"[{minimum}" if minimum is not None else f"({above}" if above is not None else None
        return f" in {lower}, {maximum}]" if lower else f" <= {maximum}"
    if minimum is not None:
        return f" >= {minimum}"
    return f" > {above}" if above is not None else ""


class ConfigChecker:
    """Collects every problem of one config; :meth:`raise_problems` reports them all at once."""

    def __init__(self) -> None:
        self.problems: list[ConfigError] = []

    def fail(self, key: str, problem: str, hint: str = "") -> None:
        if any(found.key == key for found in self.problems):  # one line per key: its first problem
            return
        self.problems.append(ConfigError(key, problem, hint))

    def raise_problems(self) -> None:
        if len(self.problems) == 1:
            raise self.problems[0]
        if self.problems:
            raise InvalidConfigError(self.problems)

    # ------------------------------------------------------------------ reading
    def section(self, cfg: DictConfig, path: str) -> Section | None:
        """The block at ``path`` with interpolations resolved; None (and a problem) if it cannot resolve."""
        node = OmegaConf.select(cfg, path)
        if node is None:
            return None
        try:
            section = Section(path, OmegaConf.to_container(node, resolve=True))
        except OmegaConfBaseException as error:
            key = error.full_key or path
            self.fail(key, str(error).splitlines()[0], f"pass {key}=<value>")
            return None
        for key in _missing_keys(section):
            self.fail(key, "has no value (???)", f"pass {key}=<value>")
        return section

    @staticmethod
    def top_level(cfg: DictConfig, names: tuple[str, ...]) -> Section:
        return Section("", {name: cfg[name] for name in names if name in cfg and not OmegaConf.is_missing(cfg, name)})

    # ------------------------------------------------------------------ values
    def number(
        self,
        section: Section,
        name: str,
        *,
        integer: bool = False,
        minimum=None,
        above=None,
        maximum=None,
        optional: bool = False,
        why: str = "",
    ) -> bool:
        """Whether ``section.name`` is absent or a number in range; a problem otherwise."""
        if name not in section or (optional and section.get(name) is None):
            return True
        value = section.get(name)
        if (_is_integer(value) if integer else _is_number(value)) and (
            (minimum is None or value >= minimum)
            and (above is None or value > above)
            and (maximum is None or value <= maximum)
        ):
            return True
        requirement = ("integer" if integer else "number") + _bounds_text(minimum, above, maximum)
        requirement += " or null" if optional else ""
        article = "an" if integer else "a"
        key = section.key(name)
        self.fail(key, f"got {value!r}, expected {article} {requirement}{why}", f"pass {key}=<{requirement}>")
        return False

    def choice(self, section: Section, name: str, choices, why: str = "") -> bool:
        """Whether ``section.name`` is absent or one of ``choices``; a problem otherwise."""
        if name not in section or section.get(name) in choices:
            return True
        key = section.key(name)
        shown = list(dict.fromkeys(str(choice) for choice in choices))  # Lightning accepts both 32 and "32"
        self.fail(
            key,
            f"got {section.get(name)!r}, expected one of {', '.join(shown)}{why}",
            f"pass {key}=<{'|'.join(shown)}>",
        )
        return False

    def flag(self, section: Section, name: str, optional: bool = False) -> None:
        self.choice(section, name, (True, False, None) if optional else (True, False))

    def registered(self, section: Section, name: str, registry: Registry) -> Callable | None:
        """The factory registered under ``section.name``; None (and a problem listing the names) if none is."""
        value = section.get(name)
        if isinstance(value, str) and value in registry:
            return registry.get(value)
        key = section.key(name)
        names = registry.names()
        self.fail(
            key, f"got {value!r}, expected a {registry.kind}: {', '.join(names)}", f"pass {key}=<{'|'.join(names)}>"
        )
        return None

    def split_name(self, splits: Section, role: str) -> None:
        if not isinstance(splits.get(role), str) or not splits.get(role):
            key = splits.key(role)
            self.fail(
                key, f"got {splits.get(role)!r}, expected the name of the {role} split", f"pass {key}=<split name>"
            )

    # ------------------------------------------------------------------ constructors
    def options(
        self, section: Section, options: dict, factory: Callable, what: str, set_by_tvr: tuple[str, ...] = ()
    ) -> bool:
        """Whether ``factory(**options, <set_by_tvr>)`` has every argument it needs and no unknown one."""
        signature = inspect.signature(factory).parameters.values()
        parameters = {p.name: p for p in signature if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        takes_any = any(p.kind is p.VAR_KEYWORD for p in signature)  # **kwargs: the constructor itself checks
        valid = sorted(name for name in parameters if name not in set_by_tvr)
        fine = True
        for name in options:
            key = section.key(name)
            if name in set_by_tvr:
                self.fail(key, f"is set by tvr for {what}", f"remove {key}")
                fine = False
            elif name not in parameters and not takes_any:
                self.fail(
                    key, f"is not an option of {what}", f"valid options: {', '.join(valid) or 'none'}; remove {key}"
                )
                fine = False
        for name, parameter in parameters.items():
            if parameter.default is parameter.empty and name not in options and name not in set_by_tvr:
                key = section.key(name)
                self.fail(key, f"is missing; {what} needs it", f"pass {key}=<value>")
                fine = False
        if factory.__module__.startswith("tvr."):  # tvr's own annotations are written to be checked
            for spec in signature_specs(factory):
                if spec.name in options and not (options[spec.name] is None and spec.nullable):
                    fine &= self._typed_value(section, spec)
        return fine

    def known_keys(self, section: Section, known: tuple[str, ...], what: str, unknown: str = "is not a key of") -> bool:
        """Whether every key of ``section`` is ``known``: an unknown one (``+foo=1``, a typo) would otherwise be
        ignored silently."""
        fine = True
        for name in section.values:
            if name not in known:
                key = section.key(name)
                self.fail(key, f"{unknown} {what}", f"valid keys: {', '.join(known)}; remove {key} or fix its spelling")
                fine = False
        return fine

    def typed(
        self,
        section: Section,
        options_class: type,
        what: str,
        *,
        unknown: str = "is not a key of",
        also_known: tuple[str, ...] = (),
    ) -> bool:
        """Whether every value of ``section`` fits the options ``options_class`` declares (type, range,
        choices, custom check; see :mod:`tvr.options`); keys it does not declare (nor ``also_known``) are
        problems."""
        specs = option_specs(options_class)
        fine = self.known_keys(section, (*(spec.name for spec in specs), *also_known), what, unknown)
        for spec in specs:
            if spec.name not in section or (section.get(spec.name) is None and spec.nullable):
                continue
            fine &= self._typed_value(section, spec)
        return fine

    def _typed_value(self, section: Section, spec) -> bool:
        value, key = section.get(spec.name), section.key(spec.name)
        choices = spec.choices()
        if choices is not None:
            return self.choice(section, spec.name, choices)
        if spec.kind is bool:
            return self.choice(section, spec.name, (True, False))
        if spec.kind in (int, float):
            facts = spec.facts
            return self.number(
                section,
                spec.name,
                integer=spec.kind is int,
                minimum=facts.minimum,
                above=facts.above,
                maximum=facts.maximum,
            )
        if spec.facts.check is not None:
            problem = spec.facts.check(value)
            if problem:
                self.fail(key, f"got {value!r}, {problem}", f"pass {key}=<{spec.facts.expected}>")
            return problem is None
        if not isinstance(value, spec.kind):
            self.fail(key, f"got {value!r}, expected a {spec.kind.__name__}", f"pass {key}=<{spec.kind.__name__}>")
            return False
        return True

    def builds(self, key: str, what: str, factory: Callable, **kwargs) -> Any:
        """Call a constructor that validates its own arguments and return what it built; what it refuses
        becomes a problem at ``key`` (and None is returned)."""
        try:
            return factory(**kwargs)
        except (TypeError, ValueError, KeyError, AssertionError) as error:  # torch asserts some shapes
            self.fail(key, f"{what} refuses these options: {error}", f"fix the options under {key}")
            return None
