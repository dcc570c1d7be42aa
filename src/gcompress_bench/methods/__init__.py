"""Compression methods as plug-ins: the registry (the interface and its harness are in base.py).

A method's options join the suite's one option table as `--<name>-<option>`, with their defaults; a
profile in experiments/llm_suites.yaml may override them under a `<name>:` section. A method that shapes
dims (ranks, widths) hands them to the run's alignment policy (align.py, `--align-policy`);
`default_align` is what the policy `method` means for it.

A method is named in one place, its registration: `register(...)` at the end of its module. The
built-in modules are listed below; more are imported from the comma-separated module names in
GCOMPRESS_METHODS (what a test sets) and the `gcompress_bench.methods` entry point group, before any option is read.
"""

from gcompress_bench import UsageError
from gcompress_bench.methods.base import CompressionFailed, Method, Option  # noqa: F401 (the plug-in API)
from gcompress_bench.registry import Registry

REGISTRY = Registry("method", "name", ("gcompress_bench.methods.palu", "gcompress_bench.methods.asvd",
                                       "gcompress_bench.methods.prune"), "GCOMPRESS_METHODS", "gcompress_bench.methods",
                    first=("gcompress_bench.methods.base",))
register, load = REGISTRY.register, REGISTRY.load


def get(name):
    methods = load()
    if name not in methods:
        raise UsageError(f"--variant: unknown value {name!r}; allowed: {', '.join(methods)}")
    return methods[name]


def option_rows():
    """The methods' options as rows of the suite's option table: (flag, config path, kind, help)."""
    return [(f"--{m.name}-{o.key.replace('_', '-')}", f"{m.name}.{o.key}", o.kind, o.help)
            for m in load().values() for o in m.options]


def defaults():
    """{method: {option: default}} for the config, under the YAML and the command line."""
    return {m.name: {o.key: o.default for o in m.options} for m in load().values() if m.options}


def check_options(cfg):
    """Every method option's value against its declared range or choices: one line naming it."""
    for m in load().values():
        for o in m.options:
            flag, v = f"--{m.name}-{o.key.replace('_', '-')}", cfg[m.name][o.key]
            if o.choices and v not in o.choices:
                raise UsageError(f"{flag}: unknown value {v!r}; allowed: {', '.join(map(str, o.choices))}")
            if o.kind in ("int", "float") and v is not None and not _within(o, v):
                raise UsageError(f"{flag}: {v} is not allowed; it must be {_range(o)}")


def _within(o, v):
    low_ok = o.minimum is None or (v > o.minimum if o.exclusive_minimum else v >= o.minimum)
    return low_ok and (o.maximum is None or v <= o.maximum) and v == v   # v != v: NaN


def _range(o):
    if o.minimum is not None and o.maximum is not None:
        return f"in {'(' if o.exclusive_minimum else '['}{o.minimum}, {o.maximum}]"
    if o.minimum is not None:
        return f"{'>' if o.exclusive_minimum else '>='} {o.minimum}"
    return f"<= {o.maximum}"


def options_for(cfg, m):
    """A method's options as plan and apply read them: its own section and the run's alignment policy."""
    policy = cfg.get("align_policy") or "method"
    own = cfg.get(m.name) or {}
    return {**own, "align_policy": m.default_align(own) if policy == "method" else policy}


def label(cfg):
    """A run's label in comparisons: its method, and every method option it set away from the default
    (a method not registered here: its name alone)."""
    name, m = cfg.get("variant"), load().get(cfg.get("variant"))
    opts = cfg.get(name) or {}
    changed = [f"{o.key}={opts[o.key]}" for o in (m.options if m else ()) if o.key in opts and opts[o.key] != o.default]
    policy = cfg.get("align_policy") or "method"
    if m and policy != "method" and policy != m.default_align(opts):
        changed.append(f"align={policy.partition(':')[0] if policy.startswith('budget:') else policy}")
    return " ".join([str(name), *changed])


register(Method())
