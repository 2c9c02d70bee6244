"""Hydra overrides as text: reading the ``key=value`` items of a command line or of a run's
``.hydra/overrides.yaml``, and quoting a value to write one.

``tvr-train ckpt_path=...`` finding the run it continues, ``tvr-results`` grouping a sweep's runs and a
sweep's job folders named by what it varies all read overrides here, with Hydra's own parser, so a value
means the same to each of them as to Hydra.
"""

from __future__ import annotations

import re

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override

REMOVED = "(removed)"  # the value of a deletion, ``~key``


def read_overrides(items: list) -> list[tuple[str, Override | None]]:
    """Each override item with Hydra's reading of it, None for an item Hydra cannot parse (the command that
    receives it reports it with its own message). Hydra's flags and their arguments (``-m``, ``--cfg job``)
    are not overrides: every override but a deletion (``~key``) has a ``=``."""
    parser = OverridesParser.create()
    read = []
    for item in map(str, items):
        if item.startswith("-") or ("=" not in item and not item.startswith("~")):
            continue
        try:
            read.append((item, parser.parse_override(item)))
        except Exception:  # Hydra's grammar errors come in several types
            read.append((item, None))
    return read


def parse_overrides(items: list) -> dict[str, str]:
    """``key: value`` of override items: ``+``/``++`` dropped, ``~key`` -> ``"(removed)"``. A string value is
    the string Hydra reads (quotes removed); any other value (a number, a list, a sweep) is kept as written,
    and so is an item Hydra cannot parse: ``["head=seqtransf", "+foo='a b'", "~x", "lr=1e-4"]`` ->
    ``{"head": "seqtransf", "foo": "a b", "x": "(removed)", "lr": "1e-4"}``."""
    settings = {}
    for item, override in read_overrides(items):
        written_key, _, written_value = item.partition("=")
        if override is None:
            settings[written_key.lstrip("+~")] = REMOVED if written_key.startswith("~") else written_value
        elif override.is_delete():
            settings[override.key_or_group] = REMOVED
        else:
            value = override.value()
            settings[override.key_or_group] = value if isinstance(value, str) else written_value
    return settings


def hydra_quote(text: str) -> str:
    """``text`` as a single-quoted Hydra override value. Hydra reads a backslash as an escape only before a
    quote (or the closing quote), so only those backslashes are doubled."""
    escaped = re.sub(r"(\\*)('|\Z)", lambda match: match.group(1) * 2 + ("\\'" if match.group(2) else ""), text)
    return f"'{escaped}'"
