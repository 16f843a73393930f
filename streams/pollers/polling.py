"""polling.yaml: which meters each agent polls, how often, from which resources.

Ceilometer's polling.yaml, with pollsters and discoveries loaded by name from
entry points (``pyproject.toml``)::

    streams.pollsters.compute   host, processes, cgroups
    streams.pollsters.central   prometheus, zookeeper, clickhouse, kafka_lag
    streams.discovery           static, local_host, local_processes, local_cgroups

File shape::

    sources:
      - name: infra                  # unique
        interval: 30                 # seconds, > 0
        meters: ["zookeeper.*", "!zookeeper.watches"]   # fnmatch wildcards; "!" excludes
        pollsters:                   # optional: only these, with their parameters
          zookeeper: {}
        discovery: [static]          # optional: else each pollster's default discovery
        discovery_params: {local_processes: {limit: 100}}
        resources:                   # optional static resources (=> discovery "static")
          - {id: zk-1, metadata: {address: "127.0.0.1:2181"}}

A meter is polled when it matches an include pattern (or there are only
exclusions) and no ``!`` pattern. A pollster runs for a source when one of
its declared meters is polled; its samples of other meters are dropped.

Everything is checked at load (:func:`load_polling`): a problem raises
:class:`PollingConfigError` naming the file, the source and the problem, e.g.
``etc/polling.yaml: source 'infra': meters: unknown meter 'zookeeper.watchs'``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from streams.config import ConfigError, Settings, read_yaml_file
from streams.pollers.base import Discovery, Pollster, Resource

POLLSTER_GROUP = "streams.pollsters.{agent}"
DISCOVERY_GROUP = "streams.discovery"
AGENTS = ("compute", "central")

_PATTERN = re.compile(r"^!?[A-Za-z0-9_.:*?\[\]-]+$")


class PollingConfigError(ConfigError):
    """polling.yaml rejected; the message names the file, the source and the problem."""


class StaticResource(BaseModel):
    """A resource listed in polling.yaml; ``metadata`` tells pollsters where it is (url, address...)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    metadata: dict[str, Any] = Field(default_factory=dict)
    user_id: str | None = None
    project_id: str | None = None

    def to_resource(self) -> Resource:
        return Resource(self.id, dict(self.metadata), self.user_id, self.project_id)


class SourceDefinition(BaseModel):
    """One polling source (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    interval: float = Field(gt=0, description="Seconds between polls of this source.")
    meters: list[str] = Field(min_length=1, description="Meter patterns; '!' excludes.")
    pollsters: dict[str, dict[str, Any] | None] | None = Field(
        None, description="Only these pollsters, with parameters; None = every pollster needing none.")
    discovery: list[str] = Field(default_factory=list, description="Discovery plugin names.")
    discovery_params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    resources: list[StaticResource | str] = Field(default_factory=list)

    _check_patterns = field_validator("meters")(classmethod(lambda cls, v: check_patterns(v)))

    def static_resources(self) -> list[Resource]:
        return [(StaticResource(id=r) if isinstance(r, str) else r).to_resource() for r in self.resources]


class PollingDefinition(BaseModel):
    """The whole file: a list of sources with unique names."""

    model_config = ConfigDict(extra="forbid")

    sources: list[SourceDefinition] = Field(min_length=1)

    @field_validator("sources")
    @classmethod
    def _unique(cls, v: list[SourceDefinition]) -> list[SourceDefinition]:
        names = [s.name for s in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate source names: {', '.join(sorted(dup))}")
        return v


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a valid meter pattern, or None when it is."""
    if not pattern or pattern == "!":
        return "empty"
    if not _PATTERN.match(pattern):
        return "only letters, digits, '_.:-', wildcards '*?[]' and a leading '!' are allowed"
    if "!" in pattern[1:].replace("[!", ""):
        return "'!' only at the start (exclusion) or as '[!...]'"
    if pattern.count("[") != pattern.count("]"):
        return "unbalanced '[' ']'"
    return None


def check_patterns(patterns: list[str]) -> list[str]:
    """Pydantic validator body for meter pattern lists.

    Raises:
        ValueError: the first bad pattern, with :func:`pattern_problem`'s reason.
    """
    for p in patterns:
        problem = pattern_problem(p)
        if problem:
            raise ValueError(f"bad pattern {p!r}: {problem}")
    return patterns


@dataclass(frozen=True)
class MeterSelector:
    """Include/exclude meter patterns of a source (fnmatch, ``!`` = exclude)."""

    patterns: tuple[str, ...]

    @property
    def includes(self) -> tuple[str, ...]:
        return tuple(p for p in self.patterns if not p.startswith("!"))

    @property
    def excludes(self) -> tuple[str, ...]:
        return tuple(p[1:] for p in self.patterns if p.startswith("!"))

    def __call__(self, meter: str) -> bool:
        return _selected(self.patterns, meter)

    def unknown(self, known: Iterable[str]) -> list[str]:
        """Patterns (as written) that match none of ``known`` meters."""
        known = list(known)
        return [p for p in self.patterns if not any(fnmatch.fnmatchcase(m, p.lstrip("!")) for m in known)]


@lru_cache(maxsize=4096)
def _selected(patterns: tuple[str, ...], meter: str) -> bool:
    inc = [p for p in patterns if not p.startswith("!")]
    exc = [p[1:] for p in patterns if p.startswith("!")]
    if inc and not any(fnmatch.fnmatchcase(meter, p) for p in inc):
        return False
    return not any(fnmatch.fnmatchcase(meter, p) for p in exc)


@dataclass
class PollingTask:
    """What a source became: the pollsters to run every ``interval`` s, each with its discoveries."""

    source: str
    interval: float
    selector: MeterSelector
    pollsters: list[tuple[str, Pollster, list[Discovery]]] = field(default_factory=list)


def plugin_names(group: str) -> list[str]:
    """Entry-point names registered in ``group``."""
    return sorted(ep.name for ep in entry_points(group=group))


def load_plugin(group: str, name: str) -> type:
    """The class registered as ``name`` in entry-point ``group``.

    Raises:
        LookupError: nothing of that name (the message lists what exists).
    """
    for ep in entry_points(group=group, name=name):
        return ep.load()
    raise LookupError(f"no {group} plugin {name!r} (known: {', '.join(plugin_names(group)) or 'none'})")


def plugin_defaults(settings: Settings | None) -> dict[str, dict[str, Any]]:
    """Keyword arguments that service settings give plugins, by plugin name, beneath polling.yaml's own:
    ``local_processes`` gets ``cmdline`` (``poller.process_cmdline``), ``kafka_lag`` gets ``kafka``
    (the Kafka connection and its TLS/SASL settings)."""
    if settings is None:
        return {}
    return {"local_processes": {"cmdline": settings.poller.process_cmdline},
            "kafka_lag": {"kafka": settings.kafka}}


def build_tasks(definition: PollingDefinition, agent: str, *, sample_source: str = "streams",
                label: str = "polling.yaml", settings: Settings | None = None) -> list[PollingTask]:
    """Instantiate the pollsters and discoveries of every source of ``definition`` for ``agent``.

    ``settings`` (optional) supplies :func:`plugin_defaults`.

    Raises:
        PollingConfigError: unknown agent, pollster, discovery or meter, bad pollster
            parameters, or a source that selects nothing; names ``label`` and the source.
    """
    if agent not in AGENTS:
        raise PollingConfigError(f"{label}: unknown agent {agent!r}; expected one of {', '.join(AGENTS)}")
    group = POLLSTER_GROUP.format(agent=agent)
    defaults = plugin_defaults(settings)
    tasks = []
    for src in definition.sources:
        def fail(problem: str, src: SourceDefinition = src) -> PollingConfigError:
            return PollingConfigError(f"{label}: source {src.name!r}: {problem}")

        chosen = src.pollsters if src.pollsters is not None else {n: None for n in plugin_names(group)}
        pollsters: list[tuple[str, Pollster]] = []
        for name, params in chosen.items():
            try:
                cls = load_plugin(group, name)
            except LookupError as exc:
                raise fail(f"pollsters: {exc}") from None
            if params is None and getattr(cls, "requires_params", False):
                if src.pollsters is not None:
                    raise fail(f"pollsters: {name} needs parameters")
                continue
            try:
                pollsters.append((name, cls(source=sample_source, **{**defaults.get(name, {}), **(params or {})})))
            except (ValidationError, TypeError, ValueError) as exc:
                raise fail(f"pollsters.{name}: bad parameters: {_one_line(exc)}") from None
        selector = MeterSelector(tuple(src.meters))
        known = {m.name for _, p in pollsters for m in p.meters}
        unknown = selector.unknown(known)
        if unknown:
            raise fail(f"meters: unknown meter {', '.join(map(repr, unknown))} "
                       f"(this source's pollsters declare: {', '.join(sorted(known)) or 'none'})")
        task = PollingTask(src.name, src.interval, selector)
        statics = src.static_resources()
        for name, p in pollsters:
            if not any(selector(m.name) for m in p.meters):
                continue
            names = ["static"] if statics else (src.discovery or [p.default_discovery])
            discoveries = []
            for dname in names:
                try:
                    dcls = load_plugin(DISCOVERY_GROUP, dname)
                    discoveries.append(dcls(resources=statics, **{**defaults.get(dname, {}),
                                                                  **src.discovery_params.get(dname, {})}))
                except LookupError as exc:
                    raise fail(f"discovery: {exc}") from None
                except (ValidationError, TypeError, ValueError) as exc:
                    raise fail(f"discovery_params.{dname}: {_one_line(exc)}") from None
            task.pollsters.append((name, p, discoveries))
        if not task.pollsters:
            raise fail("selects no meter of any pollster")
        tasks.append(task)
    return tasks


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or '(params)'}: {e['msg']}" for e in exc.errors())
    return str(exc)


def parse_polling(data: Any, label: str = "polling.yaml") -> PollingDefinition:
    """Validate an already-parsed polling document.

    Raises:
        PollingConfigError: names ``label``, the source (by name when it has one) and the problem.
    """
    if not isinstance(data, dict):
        raise PollingConfigError(f"{label}: top level must be a mapping with 'sources'")
    try:
        return PollingDefinition.model_validate(data)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            loc = list(e["loc"])
            where = ""
            if len(loc) >= 2 and loc[0] == "sources" and isinstance(loc[1], int):
                raw = data.get("sources") or []
                name = raw[loc[1]].get("name") if loc[1] < len(raw) and isinstance(raw[loc[1]], dict) else None
                where = f"source {name!r}: " if name else f"source #{loc[1] + 1}: "
                loc = loc[2:]
            problems.append(f"{where}{'.'.join(map(str, loc)) or 'sources'}: {e['msg']}")
        raise PollingConfigError(f"{label}: {'; '.join(problems)}") from None


def load_polling(path: str | Path, agent: str, *, sample_source: str = "streams",
                 interval: float | None = None, settings: Settings | None = None) -> list[PollingTask]:
    """Read, validate and instantiate polling.yaml at ``path`` for ``agent``.

    Args:
        interval: override every source's interval (s), e.g. ``streams poll --interval``.
        settings: service settings for :func:`plugin_defaults`.

    Raises:
        PollingConfigError: file missing, not YAML, or invalid (see :func:`build_tasks`).
    """
    p = Path(path)
    data = read_yaml_file(p, "polling", PollingConfigError)
    definition = parse_polling(data, str(p))
    if interval:
        for s in definition.sources:
            s.interval = interval
    return build_tasks(definition, agent, sample_source=sample_source, label=str(p), settings=settings)


def default_compute_definition(interval: float, processes: bool, max_processes: int) -> PollingDefinition:
    """What ``streams poll --agent compute`` polls without a polling.yaml: every meter of
    the host, its processes (if ``processes``) and its cgroup v2 groups, every ``interval`` s."""
    pollsters: dict[str, dict[str, Any] | None] = {"host": {}, "cgroups": {}}
    if processes:
        pollsters["processes"] = {}
    return PollingDefinition(sources=[SourceDefinition(
        name="compute", interval=interval, meters=["*"], pollsters=pollsters,
        discovery_params={"local_processes": {"limit": max_processes}})])
