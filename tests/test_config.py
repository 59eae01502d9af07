"""Configuration is validated once: the spec's defaults load, and unknown
keys, wrong types and impossible values are refused with one line naming
the field."""
from __future__ import annotations

import pytest

from connectors.config import load_trading_config
from operators.config import ConfigError, TradingConfig


def write(tmp_path, text: str) -> str:
    path = tmp_path / "trading.yaml"
    path.write_text(text)
    return str(path)


def test_shipped_config_equals_the_spec_defaults():
    assert load_trading_config("config/trading.yaml") == TradingConfig()
    cfg = TradingConfig()
    assert [s.strategy_id for s in cfg.strategies] == ["sma_5_15", "sma_10_30", "sma_20_50"]
    assert (cfg.exit.stop_loss_pct, cfg.exit.take_profit_pct, cfg.risk.initial_cash) == (0.01, 0.02, 100_000)
    assert cfg.execution.slippage_bps == 1.0 and cfg.stream.subscribe_batch_size == 10


@pytest.mark.parametrize("text,field", [
    ("strategies:\n  - {fast: 15, slow: 5, confidence: 0.7}\n", "strategies.0"),
    ("strategies:\n  - {fast: 5, slow: 5, confidence: 0.7}\n", "strategies.0"),
    ("exit: {stop_loss_pct: 1.0}\n", "exit.stop_loss_pct"),
    ("exit: {stop_loss_pct: 1.5}\n", "exit.stop_loss_pct"),
    ("risk: {initial_cash: -100}\n", "risk.initial_cash"),
    ("risk: {max_positions: ten}\n", "risk.max_positions"),
    ("signals: {aggregation: vote}\n", "signals.aggregation"),
    ("signals: {aggregation: majority, min_agree: 4}\n", "min_agree"),
    ("execution: {slippage_bps: -1}\n", "execution.slippage_bps"),
    ("stream: {feed: nasdaq}\n", "stream.feed"),
])
def test_impossible_values_are_refused_naming_the_field(tmp_path, text, field):
    with pytest.raises(ConfigError) as err:
        load_trading_config(write(tmp_path, text))
    message = str(err.value)
    assert field in message and "\n" not in message


def test_unknown_keys_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"risk\.max_leverage: unknown key"):
        load_trading_config(write(tmp_path, "risk: {max_leverage: 2}\n"))
    with pytest.raises(ConfigError, match=r"broker: unknown key"):
        load_trading_config(write(tmp_path, "broker: {}\n"))


def test_duplicate_strategy_pairs_are_refused(tmp_path):
    text = "strategies:\n  - {fast: 5, slow: 15, confidence: 0.7}\n  - {fast: 5, slow: 15, confidence: 0.8}\n"
    with pytest.raises(ConfigError, match="duplicate strategy pair"):
        load_trading_config(write(tmp_path, text))


def test_unreadable_yaml_and_missing_file_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_trading_config(write(tmp_path, "risk: {initial_cash: [1,\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_trading_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="mapping"):
        load_trading_config(write(tmp_path, "- 1\n- 2\n"))


def test_partial_file_keeps_defaults_for_the_rest(tmp_path):
    cfg = load_trading_config(write(tmp_path, "exit: {trailing_stop: true}\n"))
    assert cfg.exit.trailing_stop is True and cfg.exit.stop_loss_pct == 0.01
    assert len(cfg.strategies) == 3
