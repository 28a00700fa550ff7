"""One small registry, used for models, datasets and scorers: name → a lazily imported builder plus
metadata (input size, role, ...). Declaring an entry imports nothing, so the CLI's choices and help
text come from the catalogue (lbfood/engine/catalog.py) without importing torch.

A target is "package.module:attribute" (imported on first use), or "package.module" alone for modules
that build their objects when imported and hand them over with `provide`. A family (e.g. `wrnD_K`,
`imagefolder:PATH`) is a regular expression whose match is passed to the target as keyword arguments.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any

from lbfood.engine.errors import ConfigError, LbfoodError


@dataclass(frozen=True)
class Entry:
    name: str
    target: str
    meta: dict[str, Any] = field(default_factory=dict)
    args: dict[str, str] = field(default_factory=dict)  # a family's match groups


@dataclass(frozen=True)
class _Family:
    pattern: re.Pattern
    target: str
    shown: str  # how `names()` lists it, e.g. "wrnD_K"
    meta: dict[str, Any]


class Registry:
    """name → Entry; `load(name)` imports the entry's target. A duplicate name raises."""

    def __init__(self, kind: str, error: type[LbfoodError] = ConfigError) -> None:
        self.kind, self.error = kind, error
        self._entries: dict[str, Entry] = {}
        self._families: list[_Family] = []
        self._provided: dict[str, Any] = {}

    def add(self, name: str, target: str, **meta: Any) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = Entry(name, target, meta)

    def add_family(self, pattern: str, target: str, shown: str, **meta: Any) -> None:
        self._families.append(_Family(re.compile(pattern), target, shown, meta))

    def names(self, **where: Any) -> list[str]:
        """Registered names (sorted), optionally only those whose metadata match `where`."""
        return sorted(n for n, e in self._entries.items() if all(e.meta.get(k) == v for k, v in where.items()))

    def families(self) -> list[str]:
        return [f.shown for f in self._families]

    def help(self, **where: Any) -> str:
        """"a, b, c (or wrnD_K)": for `--help` texts."""
        text = ", ".join(self.names(**where))
        fams = self.families()
        return text + (f" (or {', '.join(fams)})" if fams and not where else "")

    def describe(self) -> str:
        """"a: meaning; b: meaning", in declaration order, from each entry's `help` metadata (`--help` texts)."""
        return "; ".join(f"{n}: {e.meta['help']}" if "help" in e.meta else n for n, e in self._entries.items())

    def entry(self, name: str) -> Entry:
        if name in self._entries:
            return self._entries[name]
        for fam in self._families:
            m = fam.pattern.fullmatch(name)
            if m:
                return Entry(name, fam.target, fam.meta, m.groupdict())
        valid = ", ".join(self.names() + self.families())
        raise self.error(f"unknown {self.kind} {name!r}; valid: {valid}")

    def __contains__(self, name: str) -> bool:
        try:
            self.entry(name)
        except LbfoodError:
            return False
        return True

    def load(self, name: str) -> Any:
        """The entry's object (a family's target is called with the match groups)."""
        e = self.entry(name)
        module, _, attr = e.target.partition(":")
        mod = importlib.import_module(module)
        if not attr:
            if name not in self._provided:
                raise RuntimeError(f"{module} did not provide {self.kind} {name!r}")
            return self._provided[name]
        obj = getattr(mod, attr)
        return obj(**e.args) if e.args else obj

    def provide(self, name: str, obj: Any) -> None:
        """Called by a module named as a target when it builds its objects at import."""
        if name not in self._entries:
            raise ValueError(f"{self.kind} {name!r} is not declared in lbfood/engine/catalog.py")
        self._provided[name] = obj
