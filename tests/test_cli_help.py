"""What a user looks for first: `cuts` alone prints the help, `cuts
--version` the version, and every subcommand and option has a help line
that shows its default (or says what happens without it)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

from dataflows.cli.main import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUTS = [sys.executable, "-m", "dataflows.cli"]


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name), sub


def test_every_subcommand_has_a_help_line():
    subs = list(_subparsers(build_parser()))
    assert len(subs) >= 12
    for name, text, _sub in subs:
        assert text and len(text) > 10, name


def test_every_option_has_a_help_line_that_shows_its_default():
    missing = []
    for name, _text, sub in _subparsers(build_parser()):
        formatter = sub._get_formatter()
        one_of = {id(a) for g in sub._mutually_exclusive_groups if g.required for a in g._group_actions}
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            if not action.help:
                missing.append(f"{name} {action.option_strings}: no help")
                continue
            if action.required or not action.option_strings or id(action) in one_of:
                continue
            shown = formatter._get_help_string(action) % vars(action)
            if "default" not in shown:
                missing.append(f"{name} {'/'.join(action.option_strings)}: {shown!r}")
    assert missing == []


def test_cuts_alone_prints_the_help_and_version_prints_the_version():
    alone = subprocess.run(CUTS, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert alone.returncode == 0 and alone.stdout.startswith("usage: cuts") and alone.stderr == ""
    for name, _text, _sub in _subparsers(build_parser()):
        assert f"    {name}" in alone.stdout
    version = subprocess.run([*CUTS, "--version"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("cuts ") and version.stdout.split()[1][0].isdigit()


def test_a_subcommands_help_shows_the_defaults():
    proc = subprocess.run([*CUTS, "backtest", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0
    assert "(default: 1)" in proc.stdout and "(default: bars)" in proc.stdout and "(default: 10)" in proc.stdout


def test_every_subcommand_is_run_by_the_module_main_imports_for_it():
    import importlib

    from dataflows.cli.main import COMMAND_MODULES

    names = {name for name, _text, _sub in _subparsers(build_parser())}
    assert set(COMMAND_MODULES) == names
    for name, module in COMMAND_MODULES.items():
        assert name in importlib.import_module(f"dataflows.cli.{module}").COMMANDS, name
