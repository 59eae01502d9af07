"""Every outside failure is one line and exit 2, before any work where
possible: the `cuts` command as a process, several inputs per class.

Classes: a DSN that is not one; a chDB directory that cannot be opened or
does not exist yet (a reader never creates one); a directory held by another
process (the true cause, not the engine's misleading error); an unreachable
or wrong ClickHouse server; an --out that cannot be written (checked before
the run); a closed stdout (`cuts report | head`).
"""
from __future__ import annotations

import fcntl
import http.server
import os
import socket
import subprocess
import sys
import threading

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUTS = [sys.executable, "-m", "dataflows.cli"]

pytestmark = pytest.mark.slow


def cuts(*args, cwd=ROOT, **kwargs):
    return subprocess.run([*CUTS, *args], capture_output=True, text=True, cwd=cwd, timeout=300, **kwargs)


def one_line(proc, *words):
    """Exit 2, exactly one line on stderr naming `words`, no traceback."""
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, err)
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("cuts: error: ") and "Traceback" not in err
    for w in words:
        assert w in err, (w, err)
    return err


@pytest.fixture(scope="module")
def bars(tmp_path_factory):
    path = tmp_path_factory.mktemp("errbars") / "bars.parquet"
    subprocess.run([*CUTS, "generate", "--symbols", "3", "--days", "2", "--seed", "5", "--out", str(path)],
                   cwd=ROOT, check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def store(bars, tmp_path_factory):
    """A chDB directory with one finished run."""
    d = tmp_path_factory.mktemp("errstore") / "ch"
    proc = cuts("backtest", "--bars", str(bars), "--clickhouse", f"chdb://{d}", "--run-id", "r", "--quiet")
    assert proc.returncode == 0, proc.stderr
    return d


def test_a_dsn_that_is_not_one_is_refused_and_creates_nothing(bars, tmp_path):
    cases = [("report", "foo://bar", ["unknown scheme foo://", "chdb:///"]),
             ("backtest", "foo://bar", ["unknown scheme foo://"]),
             ("runs", "clickhouse://host:9000", ["unknown scheme clickhouse://"]),
             ("report", "http://host:port", ["port is not a number"]),
             ("backtest", "chdb://", ["no directory"]),
             ("report", "http://", ["names no host"])]
    for command, dsn, words in cases:
        args = [command] + (["--bars", str(bars)] if command == "backtest" else [])
        one_line(cuts(*args, "--clickhouse", dsn, cwd=tmp_path), *words)
    assert os.listdir(tmp_path) == []  # no `foo:/bar` directory, no ./data/clickhouse


def test_a_report_where_nothing_was_stored_yet_says_so_and_creates_nothing(tmp_path):
    one_line(cuts("report", cwd=tmp_path), "no ClickHouse data at", "data/clickhouse", "cuts backtest")
    one_line(cuts("runs", "--clickhouse", str(tmp_path / "elsewhere"), cwd=tmp_path), "elsewhere")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("not a database")
    one_line(cuts("report", "--clickhouse", f"chdb://{tmp_path / 'plain'}"), "is not a chDB directory")
    assert sorted(os.listdir(tmp_path)) == ["plain"] and os.listdir(tmp_path / "plain") == ["notes.txt"]


def test_a_chdb_path_that_cannot_be_opened_is_one_line(bars, tmp_path):
    (tmp_path / "f").write_text("x")
    cases = [("report", tmp_path / "f", "is a file"), ("backtest", tmp_path / "f", "is a file"),
             ("backtest", tmp_path / "f" / "db", "cannot create chDB directory"),
             ("backtest", "/proc/cuts-db", "cannot create chDB directory"),
             ("report", "/sys/kernel/cuts-db", "no ClickHouse data at")]
    for command, path, words in cases:
        args = [command] + (["--bars", str(bars)] if command == "backtest" else [])
        one_line(cuts(*args, "--clickhouse", f"chdb://{path}"), str(path), words)


def test_a_store_held_by_another_process_names_it_and_what_to_do(store):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from connectors.clickhouse.client import open_client; "
         "open_client(sys.argv[1]).command('SELECT 1'); print('open', flush=True); time.sleep(60)",
         f"chdb://{store}"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        for args in (["report"], ["runs"], ["backtest", "--bars", str(store / "missing.parquet")]):
            proc = cuts(*args, "--clickhouse", f"chdb://{store}")
            one_line(proc, "in use by another process", f"(pid {holder.pid})", "ClickHouse server")
            assert proc.stdout == ""  # the engine's own message is not on stdout either
    finally:
        holder.kill()
        holder.wait()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _NotClickHouse(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(404)
        self.end_headers()
        self.wfile.write(b"no such page")

    do_POST = do_GET

    def log_message(self, *_args):
        pass


def test_an_unreachable_or_wrong_server_is_one_line_naming_it(bars):
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotClickHouse)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    port = _closed_port()
    try:
        cases = [(f"http://127.0.0.1:{port}", ["refused the connection", f"127.0.0.1:{port}"]),
                 ("http://cuts-no-such-host.invalid:8123", ["cannot resolve host cuts-no-such-host.invalid"]),
                 (f"http://user:secret@127.0.0.1:{port}", ["refused the connection"]),
                 (f"http://127.0.0.1:{web.server_port}", [f"127.0.0.1:{web.server_port}"])]
        for i, (dsn, words) in enumerate(cases):
            args = ["backtest", "--bars", str(bars)] if i == 0 else ["report"]
            err = one_line(cuts(*args, "--clickhouse", dsn), "ClickHouse server", *words)
            assert "secret" not in err and "HTTPConnectionPool" not in err
    finally:
        web.shutdown()


def test_an_out_that_cannot_be_written_stops_before_the_run(bars, tmp_path):
    (tmp_path / "f").write_text("x")
    cases = [(tmp_path / "f", "is a file, not a directory"), (tmp_path / "f" / "out", "Not a directory"),
             ("/proc/cuts-out", "cannot write into /proc/cuts-out"),
             ("/sys/kernel/cuts-out", "cannot write into /sys/kernel/cuts-out")]
    for out, words in cases:
        one_line(cuts("backtest", "--bars", str(bars), "--clickhouse", f"chdb://{tmp_path / 'ch'}",
                      "--out", str(out)), "argument --out", words)
        assert not (tmp_path / "ch").exists(), "refused before the run: nothing stored"
    one_line(cuts("report", "--csv", "/proc/cuts-out"), "argument --csv")


def test_report_into_a_closed_pipe_ends_quietly(store):
    """`cuts report | head`: the reader closes early; no traceback, no noise."""
    for args in (["report", "--json"], ["runs"]):
        read, write = os.pipe()
        fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, 4096)  # smaller than any report: the write must fail
        os.close(read)  # the reader is gone before cuts writes
        proc = subprocess.run([*CUTS, *args, "--clickhouse", f"chdb://{store}"], stdout=write,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=120)
        os.close(write)
        assert proc.returncode == 141 and proc.stderr == "", proc.stderr


def test_files_that_cannot_be_written_or_read_are_one_line(tmp_path):
    """The outside world as files: one line naming the file, exit 2."""
    cases = [(["generate", "--out", str(tmp_path / "bars.txt")], "ends in .parquet or .csv"),
             (["generate", "--out", str(tmp_path)], "is a directory"),
             (["generate", "--out", "/proc/cuts/bars.parquet"], "cannot write into /proc/cuts"),
             (["backtest", "--bars", str(tmp_path), "--clickhouse", f"chdb://{tmp_path / 'ch'}"], "is a directory"),
             (["backtest", "--bars", str(tmp_path / "none.csv"), "--clickhouse", f"chdb://{tmp_path / 'ch'}"],
              "bar file not found")]
    for args, words in cases:
        if args[0] == "generate":
            args = args[:1] + ["--symbols", "1", "--days", "1", "--seed", "1"] + args[1:]
        one_line(cuts(*args), words)


def test_a_bug_shows_its_own_traceback_and_one_line_not_the_wrapping(capsys):
    from dataflows.cli.main import _internal_error

    def inner():
        raise KeyError("missing")
    try:
        try:
            inner()
        except KeyError as exc:
            raise RuntimeError("error calling next_batch in step x") from exc
    except RuntimeError as wrapped:
        assert _internal_error(wrapped) == 1
    err = capsys.readouterr().err
    assert "in inner" in err and "error calling next_batch" not in err
    assert err.rstrip().splitlines()[-1].startswith("cuts: internal error: KeyError: 'missing' (a bug in cuts")


@pytest.mark.parametrize("code,handler_fails,reader_gone,want", [
    (0, False, False, 0), (2, False, False, 2), (130, True, False, 130), (0, True, False, 0),
    (0, False, True, 141), (2, False, True, 2)])
def test_the_program_leaves_with_mains_exit_code_after_flushing_its_outputs(code, handler_fails, reader_gone,
                                                                            want):
    """`cuts` ends with os._exit (dataflows.cli.main.run): what main() printed
    still arrives, its exit code is the process's, a failing exit handler
    changes neither, and a reader gone before the last flush ends it as
    SIGPIPE would (a failure's own code is kept)."""
    size = 100 if reader_gone else 70000  # (a small one stays in the buffer until the last flush)
    script = (
        "import atexit, sys\n"
        "import dataflows.cli.main as m\n"
        f"def fake(argv=None):\n"
        f"    print('x' * {size})\n"
        f"    print('cuts: error: one line', file=sys.stderr)\n"
        f"    return {code}\n"
        "m.main = fake\n"
        f"if {handler_fails}:\n"
        "    atexit.register(lambda: 1 / 0)\n"
        "m.run()\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout buffered, as usual
    if reader_gone:
        read, write = os.pipe()
        os.close(read)
        proc = subprocess.run([sys.executable, "-c", script], stdout=write, stderr=subprocess.PIPE, text=True,
                              cwd=ROOT, timeout=60, env=env)
        os.close(write)
    else:
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                              timeout=60, env=env)
        assert proc.stdout == "x" * 70000 + "\n"
    assert proc.returncode == want, proc.stderr
    assert "cuts: error: one line" in proc.stderr
