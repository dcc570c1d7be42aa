"""One registry for every plug-in axis (methods, suites), in the manner of lm-eval's: plug-ins register
themselves when their module is imported; the built-in modules are listed, more come from an environment
variable (comma-separated module names) and from an entry point group of installed packages."""
import importlib
import os
from importlib.metadata import entry_points

from gcompress_bench import UsageError


class Registry(dict):
    """{name: plug-in}, in the order of the built-in modules and then the plug-ins, whatever order the modules
    were first imported in."""

    def __init__(self, kind, key, builtin, variable, group, first=()):
        super().__init__()
        self.kind, self.key, self.builtin, self.variable, self.group = kind, key, builtin, variable, group
        self.first = first   # modules whose plug-ins come before every other (the baseline method)
        self.loaded = None   # the modules of the last load: the option table asks several times per run

    def register(self, plugin):
        name = getattr(plugin, self.key)
        if name in self and type(self[name]) is not type(plugin):
            raise ValueError(f"two {self.kind}s named {name!r}: {type(self[name])} and {type(plugin)}")
        self[name] = plugin
        return plugin

    def load(self):
        """Import every module of the axis (idempotent); a plug-in that cannot be imported is one UsageError
        line naming it. Returns the registry."""
        modules = self.builtin + tuple(m for m in os.environ.get(self.variable, "").split(",") if m)
        if modules == self.loaded:
            return self
        for module in modules:
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise UsageError(f"{self.variable}: cannot import {module!r} ({e}); allowed: importable module names, "
                                 "comma-separated") from None
        for ep in entry_points(group=self.group):
            try:
                ep.load()
            except ImportError as e:
                raise UsageError(f"entry point {ep.name!r} of {self.group}: cannot import {ep.value!r} ({e})") from None
        rank = {**{m: i for i, m in enumerate(modules)}, **dict.fromkeys(self.first, -1)}
        ordered = sorted(self.values(), key=lambda p: rank.get(type(p).__module__, len(rank)))
        self.clear()
        self.update((getattr(p, self.key), p) for p in ordered)
        self.loaded = modules
        return self
