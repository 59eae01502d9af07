"""Start-up of a trading run: fills of the run's own orders made while it was
down are in flight (the relay's catch-up brings them), not a discrepancy
that would block the symbol."""
from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import pytest
from alpaca.trading.client import TradingClient

from connectors.alpaca.broker import AlpacaBroker
from connectors.clickhouse import client as ch
from dataflows.reconciliation import unclear_symbols_now
from dataflows.trading import in_flight_fills
from operators.types import BUY, Fill, Order

sys.path.insert(0, str(Path(__file__).parent))
from alpaca_server import AlpacaServer  # noqa: E402

T0 = dt.datetime(2024, 1, 2, 15, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
def dsn(tmp_path):
    yield f"chdb://{tmp_path / 'ch'}"
    ch.close_clients()


def test_own_fills_made_while_down_are_in_flight_not_unclear(dsn):
    with AlpacaServer(trading=True, now=T0) as server:
        server.set_price("AAA", 50.0)
        server.set_price("BBB", 20.0)
        tc = TradingClient(server.key, server.secret, paper=True, url_override=server.trading_url)
        broker = AlpacaBroker(tc, "run1")
        recorded = Order("s.AAA.1704207000.entry", "s", "AAA", BUY, 10, 1704207000, 50.0, "entry")
        missed = Order("s.BBB.1704207060.entry", "s", "BBB", BUY, 30, 1704207060, 20.0, "entry")
        for o in (recorded, missed):
            server.fill(broker.submit_order(o).order_id, price=o.decision_price)
        server.set_position("CCC", 5, 10.0)  # not the run's: unclear
        client = ch.open_client(dsn)
        ch.ensure_schema(client)
        w = ch.ClickHouseWriter(client, "run1")
        w.add("fills", [Fill(recorded.order_id, "s", "AAA", BUY, 10, 1704207060, 50.0, 0.0, "entry")])
        w.flush()
        in_flight = in_flight_fills(tc, client, "run1", T0 - dt.timedelta(days=1))
        assert in_flight == {"BBB": 30}
        report, blocked = unclear_symbols_now(tc, client, "run1", in_flight)
        assert blocked == {"CCC"}
        _, without = unclear_symbols_now(tc, client, "run1")
        assert without == {"BBB", "CCC"}


def test_the_broker_clock_is_read_every_refresh_and_advanced_locally_between():
    from dataflows.trading import BrokerClock

    class Client:
        reads = 0

        def get_clock(self):
            Client.reads += 1
            return type("C", (), {"timestamp": T0 + dt.timedelta(seconds=100 * Client.reads)})()

    mono = [0.0]
    clock = BrokerClock(Client(), refresh_s=15, monotonic=lambda: mono[0])
    assert clock() == T0.timestamp() + 100
    mono[0] = 10.0
    assert clock() == T0.timestamp() + 110 and Client.reads == 1
    mono[0] = 15.0
    assert clock() == T0.timestamp() + 200 and Client.reads == 2


@pytest.mark.parametrize("args,env,needle", [
    (["--run-id", "bad.id"], {}, "--run-id"),
    (["--run-id", "ok", "--live"], {}, "ALPACA_PAPER=false"),
    (["--run-id", "ok"], {"ALPACA_API_KEY": ""}, "ALPACA_API_KEY"),
    (["--run-id", "ok", "--trading-url", "http://127.0.0.1:9"], {}, "unreachable"),
])
def test_a_trading_run_that_cannot_start_says_why_in_one_line_with_exit_2(monkeypatch, capsys, tmp_path,
                                                                           args, env, needle):
    from dataflows.cli.main import main

    monkeypatch.setenv("ALPACA_API_KEY", "k")
    monkeypatch.setenv("ALPACA_SECRET_KEY", "s")
    monkeypatch.delenv("ALPACA_PAPER", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    code = main(["run", "--alpaca", "--kafka", "127.0.0.1:9", "--clickhouse", f"chdb://{tmp_path / 'ch'}",
                 *args])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1


def test_the_broker_clock_settings_of_cuts_run_are_in_its_help():
    from dataflows.cli.main import build_parser

    text = " ".join(build_parser()._subparsers._group_actions[0].choices["run"].format_help().split())
    for flag in ("--clock-poll-s", "--grace-s", "--clock-refresh-s"):
        metavar = flag[2:].upper().replace("-", "_")
        assert f"{flag} {metavar} with --alpaca: " in text, flag
    assert "with --alpaca: how often the relay takes the broker's time" in text
    assert "0 reads it every time (default 15)" in text and "(default 1.5)" in text


@pytest.mark.parametrize("flag,value", [("--grace-s", "-1"), ("--clock-poll-s", "0"), ("--clock-refresh-s", "x")])
def test_a_bad_broker_clock_setting_is_one_line_and_exit_2(capsys, flag, value):
    from dataflows.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["run", "--alpaca", flag, value])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and flag in err and len(err.strip().splitlines()) == 1
