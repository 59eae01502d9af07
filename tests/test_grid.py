"""Sweep grids (spec section 8): the Cartesian product of the axes, first
axis slowest, config ids c001..., every configuration validated like a
configuration file, and a bad grid refused with one line naming the axis
and the config_id."""
from __future__ import annotations

import pytest

from connectors.config import load_grid, load_trading_config
from operators.config import TradingConfig
from operators.grid import GridError, config_id, expand, parse_grid


def grid(axes, **extra):
    return parse_grid({"axes": axes, **extra})


def test_product_first_axis_slowest_with_ids_in_that_order():
    configs = expand(grid({"exit.take_profit_pct": [0.01, 0.02],
                           "exit.stop_loss_pct": [0.005, 0.0075, 0.01]}), TradingConfig())
    assert [c.config_id for c in configs] == ["c001", "c002", "c003", "c004", "c005", "c006"]
    assert [c.values for c in configs] == [(0.01, 0.005), (0.01, 0.0075), (0.01, 0.01),
                                           (0.02, 0.005), (0.02, 0.0075), (0.02, 0.01)]
    c4 = configs[3].config
    assert (c4.exit.take_profit_pct, c4.exit.stop_loss_pct) == (0.02, 0.005)
    # everything else is the base configuration
    assert c4.model_copy(update={"exit": TradingConfig().exit}) == TradingConfig()


def test_config_ids_are_zero_padded_to_at_least_three_digits():
    assert [config_id(i) for i in (1, 9, 10, 999, 1000, 12345)] == [
        "c001", "c009", "c010", "c999", "c1000", "c12345"]


def test_list_items_are_addressed_by_zero_based_index():
    configs = expand(grid({"strategies.1.slow": [30, 40], "risk.max_positions": [5]}), TradingConfig())
    assert [c.config.strategies[1].slow for c in configs] == [30, 40]
    assert [c.config.strategies[1].strategy_id for c in configs] == ["sma_10_30", "sma_10_40"]
    assert all(c.config.risk.max_positions == 5 for c in configs)


def test_booleans_and_base_configuration_values_are_kept():
    base = TradingConfig.model_validate({"risk": {"initial_cash": 50_000}})
    configs = expand(grid({"exit.trailing_stop": [False, True]}), base)
    assert [c.config.exit.trailing_stop for c in configs] == [False, True]
    assert all(c.config.risk.initial_cash == 50_000 for c in configs)


@pytest.mark.parametrize("axes,needle", [
    ({"exit.take_profit_pctt": [0.01]}, "axis exit.take_profit_pctt: unknown key path"),
    ({"exits.take_profit_pct": [0.01]}, "axis exits.take_profit_pct: unknown key path"),
    ({"strategies.3.min_drop_pct": [0.01]}, "axis strategies.3.min_drop_pct: unknown key path"),
    ({"strategies.x.fast": [3]}, "use a 0-based index"),
    ({"exit.take_profit_pct.x": [3]}, "unknown key path"),
    ({"exit.take_profit_pct": []}, "axis exit.take_profit_pct: empty"),
    ({"exit.take_profit_pct": 0.01}, "expected a list"),
    ({"exit.take_profit_pct": [0.01, 0.01]}, "listed twice"),
])
def test_bad_axes_are_refused_with_one_line_naming_the_axis(axes, needle):
    with pytest.raises(GridError) as err:
        expand(grid(axes), TradingConfig())
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_value_that_makes_an_invalid_configuration_names_the_axis_and_the_config_id():
    g = grid({"exit.take_profit_pct": [0.01, 0.02], "exit.stop_loss_pct": [0.005, 1.5]})
    with pytest.raises(GridError) as err:
        expand(g, TradingConfig())
    message = str(err.value)
    assert "axis exit.stop_loss_pct, config c002" in message
    assert "exit.stop_loss_pct: Input should be less than or equal to 0.5" in message and "\n" not in message


def test_a_rule_across_fields_names_the_config_and_its_axis():
    g = grid({"strategies.0.fast": [5, 20]})  # (20, 15): fast must be below slow
    with pytest.raises(GridError, match=r"axis strategies\.0\.fast, config c002 .*must be below slow"):
        expand(g, TradingConfig())
    g = grid({"strategies.1.fast": [5], "strategies.1.slow": [15]})
    with pytest.raises(GridError, match=r"config c001 .*duplicate strategy pair"):
        expand(g, TradingConfig())


def test_more_configurations_than_max_configs_stop_before_expanding():
    g = grid({"exit.take_profit_pct": [0.01, 0.02, 0.03], "exit.stop_loss_pct": [0.005, 0.01]})
    assert len(expand(g, TradingConfig(), max_configs=6)) == 6
    with pytest.raises(GridError, match=r"6 configurations .* exceed --max-configs 5"):
        expand(g, TradingConfig(), max_configs=5)


def test_overlapping_axes_and_unknown_sections_are_refused():
    with pytest.raises(GridError, match="lies inside axis exit"):
        parse_grid({"axes": {"exit": [{}], "exit.take_profit_pct": [0.01]}})
    with pytest.raises(GridError, match="base: unknown key"):
        parse_grid({"axes": {"exit.take_profit_pct": [0.01]}, "base": {}})
    with pytest.raises(GridError, match="axes: expected a mapping"):
        parse_grid({"walk_forward": {"train_days": 2, "test_days": 1}})


def test_walk_forward_settings_are_validated():
    g = grid({"exit.take_profit_pct": [0.01]}, walk_forward={"train_days": 60, "test_days": 20})
    assert (g.walk_forward.train_days, g.walk_forward.test_days, g.walk_forward.anchored,
            g.objective()) == (60, 20, False, "sharpe")
    with pytest.raises(GridError, match=r"walk_forward\.objective"):
        grid({"exit.take_profit_pct": [0.01]},
             walk_forward={"train_days": 6, "test_days": 2, "objective": "sortino"})
    with pytest.raises(GridError, match=r"walk_forward\.test_days"):
        grid({"exit.take_profit_pct": [0.01]}, walk_forward={"train_days": 6, "test_days": 0})


def test_grid_file_is_read_in_axis_order(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("axes:\n  exit.trailing_stop: [false, true]\n  exit.take_profit_pct: [0.01, 0.03]\n"
                    "walk_forward: {train_days: 3, test_days: 1, anchored: true, objective: total_return}\n")
    g = load_grid(str(path))
    assert [a.path for a in g.axes] == ["exit.trailing_stop", "exit.take_profit_pct"]
    assert g.walk_forward.anchored and g.objective() == "total_return"
    with pytest.raises(GridError, match="grid file not found"):
        load_grid(str(tmp_path / "missing.yaml"))
    (tmp_path / "bad.yaml").write_text("axes: [1,\n")
    with pytest.raises(GridError, match="not valid YAML"):
        load_grid(str(tmp_path / "bad.yaml"))


def test_panic_parameters_and_a_strategys_own_exit_are_axes():
    base = load_trading_config("config/panic.yaml")
    g = grid({"strategies.3.min_drop_pct": [0.01, 0.02], "strategies.3.volume_mult": [2.5, 3.0],
              "strategies.3.exit.take_profit_pct": [0.015, 0.03]})
    configs = expand(g, base)
    assert [c.config.strategies[3].strategy_id for c in configs[::2]] == \
           ["panic_15_100", "panic_15_100", "panic_15_200", "panic_15_200"]
    assert [c.config.strategies[3].volume_mult for c in configs[:4]] == [2.5, 2.5, 3.0, 3.0]
    # the entry's other exit settings stay its own; the SMA pairs keep the top-level ones
    assert [c.config.strategy_exits()["panic_15_100"] for c in configs[:2]] == [
        (0.015, 0.0075, 240, 0.005), (0.03, 0.0075, 240, 0.005)]
    assert configs[1].config.strategy_exits()["sma_5_15"] == (0.02, 0.01, 60, 0.005)


def test_a_bad_panic_value_names_its_own_axis():
    base = load_trading_config("config/panic.yaml")
    g = grid({"strategies.3.min_drop_pct": [0.01], "strategies.3.volume_mult": [3.0, 3.005]})
    with pytest.raises(GridError) as err:
        expand(g, base)
    assert str(err.value).startswith("grid: axis strategies.3.volume_mult, config c002 ")
    assert "strategies.3.volume_mult: must be a multiple of 0.01" in str(err.value)
    g = grid({"strategies.3.min_drop_pct": [0.0125, 0.01234]})
    with pytest.raises(GridError, match=r"axis strategies\.3\.min_drop_pct, config c002 .*whole number "
                                        r"of basis points"):
        expand(g, base)
