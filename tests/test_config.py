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


# ------------------------------------------------------------- strategy types (spec 2, 2a)
PANIC = "  - {type: panic_rebound"


@pytest.mark.parametrize("text,message", [
    (PANIC + ", fast: 5}\n", "strategies.0.fast: unknown key"),
    ("strategies:\n  - {fast: 5, slow: 15, confidence: 0.7, drop_window: 3}\n", "strategies.0.drop_window: unknown key"),
    (PANIC + ", exit: {trailing_stop: true}}\n", "strategies.0.exit.trailing_stop: unknown key"),
    ("strategies:\n  - {fast: 5, slow: 15, confidence: 0.7, exit: {trailing_pct: 0.01}}\n",
     "strategies.0.exit.trailing_pct: unknown key"),
    (PANIC + ", exit: {stop_loss_pct: 1.2}}\n", "strategies.0.exit.stop_loss_pct"),
    (PANIC + ", drop_window: 0}\n", "strategies.0.drop_window"),
    (PANIC + ", volume_window: 0}\n", "strategies.0.volume_window"),
    (PANIC + ", volume_mult: 0}\n", "strategies.0.volume_mult"),
    (PANIC + ", volume_mult: -2}\n", "strategies.0.volume_mult"),
    (PANIC + ", volume_mult: 2.555}\n", "strategies.0.volume_mult: must be a multiple of 0.01"),
    (PANIC + ", min_drop_pct: 0}\n", "strategies.0.min_drop_pct"),
    (PANIC + ", min_drop_pct: 1}\n", "strategies.0.min_drop_pct"),
    (PANIC + ", min_drop_pct: 0.01555}\n", "strategies.0.min_drop_pct: must be a whole number of basis points"),
    (PANIC + ", confidence: 1.5}\n", "strategies.0.confidence"),
    (PANIC + "}\n" + PANIC + "}\n", "strategies.1.id: duplicate strategy id panic_15_150"),
    (PANIC + "}\n" + PANIC + ", drop_window: 10, id: panic_15_150}\n", "strategies.1.id: duplicate strategy id"),
    ("  - {fast: 5, slow: 15, confidence: 0.7}\n" + PANIC + ", id: sma_5_15}\n",
     "strategies.1.id: duplicate strategy id sma_5_15"),
    (PANIC + ", id: consensus}\n", "strategies.0.id"),
    (PANIC + ", id: 'a.b'}\n", "strategies.0.id"),
    ("  - {type: momentum}\n", "strategies.0.type: unknown strategy type"),
])
def test_strategy_entries_are_validated_per_type_naming_the_field(tmp_path, text, message):
    if not text.startswith("strategies:"):
        text = "strategies:\n" + text
    with pytest.raises(ConfigError) as err:
        load_trading_config(write(tmp_path, text))
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_whole_basis_points_and_hundredths_are_accepted_as_written(tmp_path):
    # 0.0155 * 10_000 = 154.99999999999997 in floats: still 155 bps as written
    cfg = load_trading_config(write(tmp_path, "strategies:\n" + PANIC + ", min_drop_pct: 0.0155, volume_mult: 2.35}\n"))
    (p,) = cfg.strategies
    assert (p.drop_bps, p.volume_mult_c, p.strategy_id) == (155, 235, "panic_15_155")


def test_panic_rebound_defaults_and_id():
    cfg = TradingConfig(strategies=[{"type": "panic_rebound"}])
    (p,) = cfg.strategies
    assert (p.drop_window, p.min_drop_pct, p.volume_window, p.volume_mult, p.confidence) == (15, 0.015, 30, 3.0, 0.75)
    assert p.strategy_id == "panic_15_150"
    assert TradingConfig(strategies=[{"type": "panic_rebound", "drop_window": 10, "min_drop_pct": 0.02}]
                         ).strategies[0].strategy_id == "panic_10_200"


def test_exit_settings_are_the_strategys_own_else_its_types_default_else_the_top_level():
    cfg = TradingConfig(
        strategies=[
            {"fast": 5, "slow": 15, "confidence": 0.7},  # sma_cross has no type defaults
            {"fast": 10, "slow": 30, "confidence": 0.75, "exit": {"stop_loss_pct": 0.004}},
            {"type": "panic_rebound"},  # its type's defaults, the top level for the fourth
            {"type": "panic_rebound", "id": "slow_panic", "exit": {"time_stop_minutes": 30,
                                                                    "time_stop_min_move_pct": 0.001}},
        ],
        exit={"take_profit_pct": 0.03, "stop_loss_pct": 0.012, "time_stop_minutes": 45,
              "time_stop_min_move_pct": 0.004})
    exits = {sid: tuple(x) for sid, x in cfg.strategy_exits().items()}
    assert exits == {
        "sma_5_15": (0.03, 0.012, 45, 0.004),
        "sma_10_30": (0.03, 0.004, 45, 0.004),
        "panic_15_150": (0.015, 0.0075, 240, 0.004),
        "slow_panic": (0.015, 0.0075, 30, 0.001),
    }


def test_consensus_comes_first_then_the_other_types_in_list_order_with_the_top_level_exit():
    cfg = TradingConfig(strategies=[{"type": "panic_rebound", "id": "p1"},
                                    {"fast": 5, "slow": 15, "confidence": 0.7, "exit": {"stop_loss_pct": 0.002}},
                                    {"fast": 10, "slow": 30, "confidence": 0.75},
                                    {"type": "panic_rebound", "id": "p2"}],
                        signals={"aggregation": "weighted"})
    assert cfg.strategy_ids() == ["consensus", "p1", "p2"]
    assert tuple(cfg.strategy_exits()["consensus"]) == (0.02, 0.01, 60, 0.005)


def test_majority_needs_min_agree_sma_cross_entries_not_counting_other_types(tmp_path):
    text = "strategies:\n  - {fast: 5, slow: 15, confidence: 0.7}\n" + PANIC + "}\nsignals: {aggregation: majority}\n"
    with pytest.raises(ConfigError, match=r"min_agree \(2\) exceeds the number of sma_cross strategies \(1\)"):
        load_trading_config(write(tmp_path, text))


def test_the_same_pair_twice_runs_under_two_ids():
    cfg = TradingConfig(strategies=[{"fast": 5, "slow": 15, "confidence": 0.7},
                                    {"fast": 5, "slow": 15, "confidence": 0.7, "id": "tight",
                                     "exit": {"take_profit_pct": 0.01, "stop_loss_pct": 0.005}}])
    assert cfg.strategy_ids() == ["sma_5_15", "tight"]


def test_shipped_panic_config_is_the_three_pairs_plus_the_panic_detector_with_its_defaults():
    cfg = load_trading_config("config/panic.yaml")
    assert cfg.strategy_ids() == ["sma_5_15", "sma_10_30", "sma_20_50", "panic_15_150"]
    assert cfg.strategies[:3] == TradingConfig().strategies
    assert cfg.strategies[3] == TradingConfig(strategies=[{"type": "panic_rebound"}]).strategies[0].model_copy(
        update={"exit": cfg.strategies[3].exit})
    assert tuple(cfg.strategy_exits()["panic_15_150"]) == (0.015, 0.0075, 240, 0.005)
    # the rest is the default configuration, but for the losing streak (counted across
    # every strategy: three SMA losses in a row would end the day before a panic can signal)
    assert cfg.risk.max_consecutive_losses == 10
    default = TradingConfig().model_dump(exclude={"strategies"})
    default["risk"]["max_consecutive_losses"] = 10
    assert cfg.model_dump(exclude={"strategies"}) == default


def test_every_configured_type_has_an_operator():
    from operators.config import STRATEGY_CONFIGS
    from operators.strategies import TYPES

    assert list(STRATEGY_CONFIGS) == list(TYPES)
    assert all(TYPES[name].name == name for name in TYPES)
