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


@pytest.mark.parametrize("text,field,hint", [
    ("exit: {take_profit_pct: 2}\n", "exit.take_profit_pct", "percentages are fractions"),
    ("exit: {take_profit_pct: 0.6}\n", "exit.take_profit_pct", "less than or equal to 0.5 (got 0.6)"),
    ("exit: {stop_loss_pct: 0.75}\n", "exit.stop_loss_pct", "(got 0.75)"),
    ("exit: {trailing_pct: 5}\n", "exit.trailing_pct", "percentages are fractions"),
    ("exit: {trailing_activation_pct: 0.9}\n", "exit.trailing_activation_pct", "(got 0.9)"),
    ("exit: {time_stop_min_move_pct: 1.5}\n", "exit.time_stop_min_move_pct", "percentages are fractions"),
    ("exit: {time_stop_minutes: 50000}\n", "exit.time_stop_minutes", "(got 50000)"),
    ("risk: {risk_per_trade_pct: 1.5}\n", "risk.risk_per_trade_pct", "percentages are fractions"),
    ("execution: {slippage_bps: 5000}\n", "execution.slippage_bps", "(got 5000"),
])
def test_values_outside_the_sane_bounds_are_refused_with_the_value(tmp_path, text, field, hint):
    with pytest.raises(ConfigError) as err:
        load_trading_config(write(tmp_path, text))
    assert str(err.value).split(": ", 1)[1].startswith(field) and hint in str(err.value)


@pytest.mark.parametrize("text", [
    "exit: {take_profit_pct: 0.5, stop_loss_pct: 0.25}\n",  # at the bounds
    "exit: {trailing_activation_pct: 0, time_stop_min_move_pct: 0, time_stop_minutes: 43200}\n",
    "risk: {risk_per_trade_pct: 1, max_position_pct: 1}\nexecution: {slippage_bps: 1000}\n",
])
def test_values_at_the_bounds_are_accepted(tmp_path, text):
    load_trading_config(write(tmp_path, text))


def test_strategies_whose_entries_can_never_pass_the_filter_are_named():
    from operators.config_checks import never_entering

    assert never_entering(TradingConfig()) == []
    tight = TradingConfig.model_validate({"exit": {"take_profit_pct": 0.015, "stop_loss_pct": 0.01}})
    warned = never_entering(tight)
    assert len(warned) == 3 and warned[0].startswith("strategy sma_5_15 can never enter: risk/reward 1.50")
    assert "signals.min_risk_reward 2" in warned[0]
    assert never_entering(tight.model_copy(update={"signals": tight.signals.model_copy(
        update={"min_risk_reward": 1.5})})) == []  # exactly at the minimum passes (the filter's `<`)
    shy = TradingConfig.model_validate({"strategies": [{"fast": 5, "slow": 15, "confidence": 0.6},
                                                       {"fast": 10, "slow": 30, "confidence": 0.75}]})
    assert [w.split(":")[0] for w in never_entering(shy)] == ["strategy sma_5_15 can never enter"]
    assert "confidence 0.6 is below signals.min_confidence 0.7" in never_entering(shy)[0]
    majority = TradingConfig.model_validate({
        "strategies": [{"fast": 5, "slow": 15, "confidence": 0.5}, {"fast": 10, "slow": 30, "confidence": 0.6}],
        "signals": {"aggregation": "majority"}})
    assert never_entering(majority)[0].startswith("strategy consensus can never enter: its confidence 0.6")
