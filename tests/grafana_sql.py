"""A panel's SQL as ClickHouse receives it from Grafana with the official
ClickHouse data source (grafana-clickhouse-datasource 4.x), for the tests
that run every dashboard query on chDB.

Two steps, in Grafana's order:
1. Grafana's template variables (the browser): `${name:sqlstring}` becomes
   the value quoted with ' (a ' inside doubled), `${name}` and `$name` the
   value as it is; the globals `$__from` / `$__to` (epoch ms),
   `$__interval_ms` and `$__interval` (as `1m`, `30s`).
2. The plugin's macros (its backend, pkg/macros), with the panel's time range
   in UTC and its interval: `$__timeFilter(c)` -> `c >= toDateTime(FROM_S)
   AND c <= toDateTime(TO_S)`, `$__timeFilter_ms(c)` (fromUnixTimestamp64Milli
   of the ms), `$__dateFilter(c)` (toDate('YYYY-MM-DD')), `$__fromTime`,
   `$__toTime`, `$__fromTime_ms`, `$__toTime_ms`, `$__timeInterval(c)` ->
   `toStartOfInterval(toDateTime(c), INTERVAL S second)` with S the interval
   in whole seconds (at least 1), `$__timeInterval_ms(c)`, `$__interval_s`.
   Comments are dropped first (the plugin replaces them by spaces).

Anything else that starts with `$` outside a string literal raises
`UnknownMacro`: a dashboard that uses what is not modelled here fails its
test instead of passing untested.
"""
from __future__ import annotations

import datetime as dt
import re

_NAME = re.compile(r"\$(?:\{(\w+)(?::(\w+))?\}|(__\w+|\w+))")


class UnknownMacro(ValueError):
    pass


def _strip_comments(sql: str) -> str:
    out, i, n = [], 0, len(sql)
    while i < n:
        if sql[i] == "'":
            j = _string_end(sql, i)
            out.append(sql[i:j])
            i = j
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j
            out.append(" ")
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
            out.append(" ")
        else:
            out.append(sql[i])
            i += 1
    return "".join(out)


def _string_end(sql: str, i: int) -> int:
    """Index after the '...' literal starting at i ('' and \\' inside)."""
    j = i + 1
    while j < len(sql):
        if sql[j] == "\\":
            j += 2
        elif sql[j] == "'":
            if sql.startswith("''", j):
                j += 2
            else:
                return j + 1
        else:
            j += 1
    raise UnknownMacro(f"unterminated string literal at {i}")


def _args(sql: str, open_at: int) -> tuple[list[str], int]:
    """Arguments of the call whose '(' is at open_at, and the index after ')'."""
    depth, start, args, j = 0, open_at + 1, [], open_at
    while j < len(sql):
        c = sql[j]
        if c == "'":
            j = _string_end(sql, j)
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                args.append(sql[start:j].strip())
                return [a for a in args if a], j + 1
        elif c == "," and depth == 1:
            args.append(sql[start:j].strip())
            start = j + 1
        j += 1
    raise UnknownMacro(f"unclosed macro call at {open_at}")


def _interval_text(ms: int) -> str:
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def render(sql: str, frm: dt.datetime, to: dt.datetime, interval_ms: int, variables: dict[str, str]) -> str:
    """`sql` as the plugin sends it to ClickHouse (see the module docstring)."""
    sql = _strip_comments(sql)
    from_s, to_s = int(frm.timestamp()), int(to.timestamp())
    from_ms, to_ms = int(frm.timestamp() * 1000), int(to.timestamp() * 1000)
    seconds = max(interval_ms // 1000, 1)
    glob = {"__from": str(from_ms), "__to": str(to_ms), "__interval_ms": str(interval_ms),
            "__interval": _interval_text(interval_ms)}

    def one_arg(name, args):
        if len(args) != 1:
            raise UnknownMacro(f"$__{name} takes 1 argument, got {len(args)}")
        return args[0]

    calls = {
        "timeFilter": lambda a: f"{one_arg('timeFilter', a)} >= toDateTime({from_s}) AND {a[0]} <= toDateTime({to_s})",
        "timeFilter_ms": lambda a: (f"{one_arg('timeFilter_ms', a)} >= fromUnixTimestamp64Milli({from_ms}) AND "
                                    f"{a[0]} <= fromUnixTimestamp64Milli({to_ms})"),
        "dateFilter": lambda a: (f"{one_arg('dateFilter', a)} >= toDate('{frm.astimezone(dt.timezone.utc):%Y-%m-%d}') "
                                 f"AND {a[0]} <= toDate('{to.astimezone(dt.timezone.utc):%Y-%m-%d}')"),
        "timeInterval": lambda a: (f"toStartOfInterval(toDateTime({one_arg('timeInterval', a)}), "
                                   f"INTERVAL {seconds} second)"),
        "timeInterval_ms": lambda a: (f"toStartOfInterval(toDateTime64({one_arg('timeInterval_ms', a)}, 3), "
                                      f"INTERVAL {max(interval_ms, 1)} millisecond)"),
    }
    plain = {"fromTime": f"toDateTime({from_s})", "toTime": f"toDateTime({to_s})",
             "fromTime_ms": f"fromUnixTimestamp64Milli({from_ms})", "toTime_ms": f"fromUnixTimestamp64Milli({to_ms})",
             "interval_s": str(seconds)}

    out, i = [], 0
    while i < len(sql):
        c = sql[i]
        if c == "'":
            j = _string_end(sql, i)
            out.append(sql[i:j])
            i = j
            continue
        if c != "$":
            out.append(c)
            i += 1
            continue
        m = _NAME.match(sql, i)
        if m is None:
            raise UnknownMacro(f"stray $ at {i}: {sql[i:i + 20]!r}")
        braced, fmt, bare = m.group(1), m.group(2), m.group(3)
        name = braced or bare
        end = m.end()
        if bare and bare.startswith("__") and bare[2:] in calls:
            if end >= len(sql) or sql[end] != "(":
                raise UnknownMacro(f"${bare} needs its arguments")
            args, end = _args(sql, end)
            out.append(calls[bare[2:]](args))
        elif bare and bare.startswith("__") and bare[2:] in plain:
            out.append(plain[bare[2:]])
        elif name in glob:
            out.append(glob[name])
        elif name in variables:
            value = str(variables[name])
            if fmt == "sqlstring":
                value = "'" + value.replace("'", "''") + "'"
            elif fmt is not None:
                raise UnknownMacro(f"variable format {fmt!r} is not modelled")
            out.append(value)
        else:
            raise UnknownMacro(f"unknown macro or variable {m.group(0)!r}")
        i = end
    return "".join(out)
