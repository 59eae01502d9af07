"""Sweep grids (spec section 8): a base configuration plus axes, expanded into
validated configurations with their `config_id`s.

An axis is a dotted key path into the configuration (`exit.take_profit_pct`,
`strategies.3.min_drop_pct`: a list item by its 0-based index) with a list of
values. The configurations are the Cartesian product of the axes, first axis
slowest; `config_id` is the 1-based position in that order, zero-padded to at
least three digits (c001 ... c999, c1000). Every configuration is validated
like a configuration file; the first bad one stops the sweep before any work
with one line naming the axis and the config_id (`GridError`).

Pure: reading the YAML file is `connectors.config.load_grid`.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from operators.config import ConfigError, TradingConfig, describe_validation_error, error_location

DEFAULT_MAX_CONFIGS = 10_000
OBJECTIVES = ("sharpe", "total_return", "profit_factor")


class GridError(ConfigError):
    """A grid that must not start: one line naming the axis (and config_id)."""


class WalkForwardSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    train_days: int = Field(ge=1)
    test_days: int = Field(ge=1)
    anchored: bool = False
    objective: Literal["sharpe", "total_return", "profit_factor"] = "sharpe"


@dataclass(frozen=True)
class Axis:
    path: str  # dotted key path, as written in the grid
    values: tuple

    @property
    def keys(self) -> tuple:
        """Path segments; list indices as ints."""
        return tuple(int(k) if k.isdigit() else k for k in self.path.split("."))


@dataclass(frozen=True)
class GridConfig:
    config_id: str
    values: tuple  # one value per axis, in axis order
    config: TradingConfig


@dataclass(frozen=True)
class Grid:
    axes: tuple  # Axis, first axis slowest
    walk_forward: WalkForwardSpec | None = None

    @property
    def size(self) -> int:
        return math.prod(len(a.values) for a in self.axes)

    def objective(self) -> str:
        return self.walk_forward.objective if self.walk_forward else "sharpe"

    def to_json(self) -> str:
        """Canonical text of the grid (its identity in sweep ids and records)."""
        return json.dumps({"axes": {a.path: list(a.values) for a in self.axes},
                           "walk_forward": self.walk_forward.model_dump() if self.walk_forward else None},
                          sort_keys=False, separators=(",", ":"))


def config_id(position: int) -> str:
    """1-based position in the product -> c001, ..., c999, c1000."""
    return f"c{position:03d}"


def parse_grid(raw: Any, where: str = "grid") -> Grid:
    """The grid file's mapping -> Grid (axes checked for shape only)."""
    if not isinstance(raw, dict):
        raise GridError(f"{where}: expected a mapping with `axes` (and optionally `walk_forward`)")
    unknown = sorted(set(raw) - {"axes", "walk_forward"})
    if unknown:
        raise GridError(f"{where}: {unknown[0]}: unknown key (expected axes, walk_forward)")
    axes_raw = raw.get("axes")
    if not isinstance(axes_raw, dict) or not axes_raw:
        raise GridError(f"{where}: axes: expected a mapping of key paths to lists of values")
    axes = []
    for path, values in axes_raw.items():
        path = str(path)
        if not path or any(not part for part in path.split(".")):
            raise GridError(f"{where}: axis {path!r}: not a dotted key path")
        if not isinstance(values, list):
            raise GridError(f"{where}: axis {path}: expected a list of values")
        if not values:
            raise GridError(f"{where}: axis {path}: empty (give at least one value)")
        seen = []
        for v in values:
            if any(_same(v, s) for s in seen):
                raise GridError(f"{where}: axis {path}: value {json.dumps(v)} listed twice")
            seen.append(v)
        axes.append(Axis(path, tuple(values)))
    for a, b in itertools.permutations(axes, 2):
        if b.path.startswith(a.path + "."):
            raise GridError(f"{where}: axis {b.path} lies inside axis {a.path}: sweep one or the other")
    wf = raw.get("walk_forward")
    spec = None
    if wf is not None:
        try:
            spec = WalkForwardSpec.model_validate(wf)
        except ValidationError as exc:
            raise GridError(f"{where}: walk_forward.{describe_validation_error(exc)}") from None
    return Grid(tuple(axes), spec)


def _same(a, b) -> bool:
    return type(a) is type(b) and a == b


def expand(grid: Grid, base: TradingConfig, max_configs: int = DEFAULT_MAX_CONFIGS,
           where: str = "grid") -> list[GridConfig]:
    """Every configuration of the grid, validated, in config_id order."""
    if grid.size > max_configs:
        sizes = " x ".join(f"{len(a.values)} ({a.path})" for a in grid.axes)
        raise GridError(f"{where}: {grid.size:,} configurations ({sizes}) exceed --max-configs "
                        f"{max_configs:,}")
    base_doc = json.loads(base.model_dump_json())
    for axis in grid.axes:  # a wrong path is named before any value is judged
        _check_path(base_doc, axis, where)
    out = []
    for i, values in enumerate(itertools.product(*(a.values for a in grid.axes)), start=1):
        cid = config_id(i)
        doc = json.loads(json.dumps(base_doc))
        for axis, value in zip(grid.axes, values):
            _set(doc, axis, value, where)
        try:
            cfg = TradingConfig.model_validate(doc)
        except ValidationError as exc:
            axis = _axis_of(grid.axes, exc)
            raise GridError(f"{where}: axis {axis}, config {cid} ({_describe(grid.axes, values)}): "
                            f"{describe_validation_error(exc)}") from None
        out.append(GridConfig(cid, tuple(values), cfg))
    return out


def _check_path(doc, axis: Axis, where: str) -> None:
    node = doc
    keys = axis.keys
    for depth, key in enumerate(keys):
        here = ".".join(str(k) for k in keys[:depth]) or "the configuration"
        if isinstance(node, list):
            if not isinstance(key, int):
                raise GridError(f"{where}: axis {axis.path}: {here} is a list: use a 0-based index, "
                                f"not {key!r}")
            if key >= len(node):
                raise GridError(f"{where}: axis {axis.path}: unknown key path ({here} has {len(node)} "
                                f"item(s) in the base configuration: 0-{len(node) - 1})")
            node = node[key]
        elif isinstance(node, dict):
            if key not in node and str(key) not in node:
                raise GridError(f"{where}: axis {axis.path}: unknown key path ({key} is not a key of "
                                f"{here})")
            node = node.get(key, node.get(str(key)))
            if node is None and depth < len(keys) - 1:
                return  # an optional section left empty in the base (its keys are judged by the model)
        else:
            raise GridError(f"{where}: axis {axis.path}: unknown key path ({here} is a value, not a "
                            f"section)")


def _set(doc, axis: Axis, value, where: str) -> None:
    node = doc
    keys = axis.keys
    for key in keys[:-1]:
        if isinstance(node, list):
            node = node[key]
        else:
            k = key if key in node else str(key)
            if node.get(k) is None:
                node[k] = {}
            node = node[k]
    last = keys[-1]
    if isinstance(node, list):
        node[last] = value
    else:
        node[last if last in node else str(last)] = value


def _axis_of(axes: tuple, exc: ValidationError) -> str:
    """The axis a validation error is about: the one whose path shares the
    longest prefix with the error's location; every axis when none does (a
    rule across sections, such as min_agree above the number of strategies)."""
    loc = tuple(str(p) for p in error_location(exc.errors()[0]))
    best, best_len = None, 0
    for a in axes:
        parts = tuple(a.path.split("."))
        n = 0
        while n < min(len(parts), len(loc)) and parts[n] == loc[n]:
            n += 1
        if n > best_len:
            best, best_len = a.path, n
    if best is None:
        return (" / ".join(a.path for a in axes)) if len(axes) > 1 else axes[0].path
    return best


def _describe(axes: tuple, values: tuple) -> str:
    return ", ".join(f"{a.path}={json.dumps(v)}" for a, v in zip(axes, values))
