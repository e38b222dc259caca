"""The CLI explains itself: every argument of every subcommand has a help text, `--optimizer`
lists the optimizers the train section knows, and `dslc --version` prints the version."""
import argparse

import pytest

import dslc
from dslc.cli import build_parser, main
from dslc.train_section import OPTIMIZERS


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def _arguments(parser, where="dslc"):
    """(where, action) for every argument of `parser` and of its subcommands, help flags aside."""
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        yield where, action
    for name, sub in _subparsers(parser):
        yield from _arguments(sub, f"{where} {name}")


def test_every_argument_of_every_subcommand_has_a_help_text():
    missing = [f"{where} {'/'.join(a.option_strings) or a.dest}" for where, a in _arguments(build_parser())
               if not (a.help and a.help.strip()) and a.help != argparse.SUPPRESS]
    assert not missing, "arguments without help=: " + ", ".join(missing)


def test_every_subcommand_has_a_one_line_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    assert set(helps) == set(sub.choices)
    assert all(h and h.strip() for h in helps.values()), helps


def test_the_walk_sees_the_subcommands_and_their_flags():
    found = {(where, opt) for where, a in _arguments(build_parser()) for opt in a.option_strings}
    assert {("dslc run", "--optimizer"), ("dslc viz", "--fit"), ("dslc", "--version")} <= found


def test_optimizer_lists_the_train_sections_optimizers():
    run = dict(_subparsers(build_parser()))["run"]
    opt = next(a for a in run._actions if "--optimizer" in a.option_strings)
    assert tuple(opt.choices) == tuple(OPTIMIZERS)
    assert all(name in opt.help for name in OPTIMIZERS)


def test_unknown_optimizer_is_a_usage_error_listing_them(capsys):
    assert main(["run", "models/digits_cnn.net", "--optimizer", "adm"]) == 2
    err = capsys.readouterr().err
    assert "adm" in err and all(repr(name) in err for name in OPTIMIZERS)


def test_version(capsys):
    with pytest.raises(SystemExit) as e:        # argparse's version action exits; main returns it
        build_parser().parse_args(["--version"])
    assert e.value.code == 0
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.strip().startswith("dslc ")
    assert out.split()[-1][0].isdigit()


def test_version_falls_back_to_the_package_when_not_installed(monkeypatch):
    import importlib.metadata as md

    from dslc import cli

    def not_installed(name):
        raise md.PackageNotFoundError(name)
    monkeypatch.setattr(md, "version", not_installed)
    assert cli._version() == dslc.__version__
