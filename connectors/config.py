"""Loading configuration: the YAML file and the environment.

The only module that reads environment variables. Everything is validated
once, at start-up; a bad file stops with one line naming the field.
"""
from __future__ import annotations

import os

import yaml
from pydantic import ValidationError

from operators.config import ConfigError, TradingConfig, describe_validation_error
from operators.grid import Grid, GridError, parse_grid

DEFAULT_CONFIG = "config/trading.yaml"
DEFAULT_CLICKHOUSE = "chdb://./data/clickhouse"


def _read_yaml(path: str, what: str, error: type[Exception]):
    """A YAML file's content; a missing file or bad YAML is `error` with one line."""
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except FileNotFoundError:
        raise error(f"{what} file not found: {path}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise error(f"{path}{where}: not valid YAML") from None


def load_trading_config(path: str | None) -> TradingConfig:
    """The trading configuration from `path` (defaults when None and no default file)."""
    if path is None:
        path = DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None
    if path is None:
        return TradingConfig()
    raw = _read_yaml(path, "config", ConfigError)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    try:
        return TradingConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_validation_error(exc)}") from None


def load_grid(path: str) -> Grid:
    """A sweep grid file (`axes`, optional `walk_forward`), checked for shape;
    `operators.grid.expand` validates its configurations."""
    return parse_grid(_read_yaml(path, "grid", GridError), where=path)


def clickhouse_dsn(cli_value: str | None) -> str:
    """--clickhouse, else CLICKHOUSE_DSN, else embedded chDB under ./data/clickhouse."""
    return cli_value or os.environ.get("CLICKHOUSE_DSN") or DEFAULT_CLICKHOUSE


def kafka_bootstrap(cli_value: str | None) -> str | None:
    """--kafka, else KAFKA_BOOTSTRAP, else None (the caller may start an embedded broker)."""
    return cli_value or os.environ.get("KAFKA_BOOTSTRAP") or None


def alpaca_credentials() -> tuple[str, str]:
    """(ALPACA_API_KEY, ALPACA_SECRET_KEY); a missing one stops with one line."""
    key = os.environ.get("ALPACA_API_KEY", "").strip()
    secret = os.environ.get("ALPACA_SECRET_KEY", "").strip()
    missing = [name for name, value in (("ALPACA_API_KEY", key), ("ALPACA_SECRET_KEY", secret))
               if not value]
    if missing:
        raise ConfigError(f"Alpaca credentials missing: set {' and '.join(missing)} in the environment")
    return key, secret


def alpaca_urls() -> tuple[str | None, str | None]:
    """Optional overrides (stream base URL, market-data REST base URL) from
    ALPACA_DATA_WS_URL (e.g. wss://stream.data.alpaca.markets; a trailing
    /v2/<feed> is replaced by the chosen feed) and ALPACA_DATA_URL (e.g.
    https://data.alpaca.markets); None means Alpaca's own."""
    return (os.environ.get("ALPACA_DATA_WS_URL") or None, os.environ.get("ALPACA_DATA_URL") or None)


def alpaca_feed(cli_value: str | None) -> str | None:
    """--feed, else ALPACA_FEED, else None (the config file's stream.feed)."""
    return cli_value or os.environ.get("ALPACA_FEED") or None


class LiveTradingRefused(ConfigError):
    """Live trading was asked for without every required switch."""


def trading_mode(live_flag: bool) -> str:
    """'paper' unless both --live and ALPACA_PAPER=false: a live account needs
    two deliberate switches, never one by accident."""
    paper_env = os.environ.get("ALPACA_PAPER", "true").strip().lower()
    if paper_env not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"ALPACA_PAPER must be true or false, not {paper_env!r}")
    paper = paper_env in ("true", "1", "yes")
    if live_flag and paper:
        raise LiveTradingRefused("--live needs ALPACA_PAPER=false as well; refusing to guess")
    if not live_flag and not paper:
        raise LiveTradingRefused("ALPACA_PAPER=false needs --live as well; refusing to guess")
    return "live" if live_flag else "paper"


def operator_name(cli_value: str | None) -> str:
    """Who issued a halt or resume: --who, else the login name from the environment."""
    return cli_value or os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown"


def alpaca_trading_url() -> str | None:
    """ALPACA_TRADING_URL: the trading REST base URL override (None: Alpaca's own)."""
    return os.environ.get("ALPACA_TRADING_URL") or None


def alpaca_trading_stream_url() -> str | None:
    """ALPACA_TRADING_WS_URL: the trade-updates websocket URL override (None: Alpaca's own)."""
    return os.environ.get("ALPACA_TRADING_WS_URL") or None
