"""The parser's disk cache (dslc/parser.py): where it lives, that a cached parser parses exactly
as a freshly built one, and that a stale, corrupt or unwritable cache never breaks parsing."""
import os
from pathlib import Path

import lark.lark
import pytest

from dslc import parser
from dslc.diagnostics import Source

REPO = Path(__file__).resolve().parents[2]
GRAMMAR = parser._grammar_text()
PROGRAM = (REPO / "models" / "lenet5.net").read_text()


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def positions(tree):
    """Every subtree's rule and source span: what the AST's spans are built from."""
    return [(t.data, t.meta.line, t.meta.column, t.meta.end_line, t.meta.end_column) for t in tree.iter_subtrees()]


def forbid_grammar_analysis(monkeypatch):
    """Make building a parser from the grammar fail, so only a load from the cache can succeed."""
    def analyse(*args, **kwargs):
        raise AssertionError("the grammar was analysed: the cache was not used")
    monkeypatch.setattr(lark.lark, "load_grammar", analyse)


def test_cache_lives_in_the_users_cache_directory(cache_home):
    path = parser.grammar_cache_path(GRAMMAR)
    assert Path(path).parent == cache_home / "dslc"
    assert not Path(path).is_relative_to(REPO)


def test_cache_falls_back_to_dot_cache_in_home(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Path(parser.grammar_cache_path(GRAMMAR)).parent == tmp_path / ".cache" / "dslc"


def test_a_second_build_loads_the_cache_and_parses_identically(cache_home, monkeypatch):
    built = parser.build_lark(GRAMMAR)
    assert os.path.isfile(parser.grammar_cache_path(GRAMMAR))
    forbid_grammar_analysis(monkeypatch)
    loaded = parser.build_lark(GRAMMAR)
    assert loaded.parse(PROGRAM) == built.parse(PROGRAM)
    assert positions(loaded.parse(PROGRAM)) == positions(built.parse(PROGRAM))
    # syntax errors name terminals through the parser too
    source = Source("bad.net", "network n {\n  x = input -> conv(8, 3x3\n}\n")
    fresh_diagnostic = parser.syntax_diagnostic(source, _syntax_error(built, source))
    cached_diagnostic = parser.syntax_diagnostic(source, _syntax_error(loaded, source))
    assert cached_diagnostic.render() == fresh_diagnostic.render()


def _syntax_error(lark_parser, source):
    with pytest.raises(lark.exceptions.UnexpectedInput) as err:
        lark_parser.parse(source.text)
    return err.value


def test_grammars_differing_keep_separate_files(cache_home):
    other = GRAMMAR + "\n// another version of the grammar\n"
    assert parser.grammar_cache_path(other) != parser.grammar_cache_path(GRAMMAR)


def test_a_cache_of_another_grammar_at_the_path_is_rebuilt(cache_home, monkeypatch):
    # A file holding the parser of another grammar (a hash collision in the file name, or a file
    # copied over): Lark's own check of the grammar's hash inside the file must reject it.
    other = 'start: "x"\n%ignore " "\n'
    path = parser.grammar_cache_path(GRAMMAR)
    monkeypatch.setattr(parser, "grammar_cache_path", lambda grammar: path)
    parser.build_lark(other)
    assert parser.build_lark(GRAMMAR).parse(PROGRAM) == lark.Lark(
        GRAMMAR, parser="lalr", propagate_positions=True, maybe_placeholders=False).parse(PROGRAM)


@pytest.mark.parametrize("content", [b"", b"not a cache\n", b"x" * 1000, None])
def test_a_corrupt_cache_is_rebuilt_and_rewritten(cache_home, monkeypatch, content):
    path = Path(parser.grammar_cache_path(GRAMMAR))
    if content is None:          # a cache cut short, as by a process killed while writing it
        parser.build_lark(GRAMMAR)
        content = path.read_bytes()[:len(path.read_bytes()) // 2]
    path.write_bytes(content)
    reference = lark.Lark(GRAMMAR, parser="lalr", propagate_positions=True, maybe_placeholders=False)
    assert positions(parser.build_lark(GRAMMAR).parse(PROGRAM)) == positions(reference.parse(PROGRAM))
    forbid_grammar_analysis(monkeypatch)           # the file was rewritten whole
    assert parser.build_lark(GRAMMAR).parse(PROGRAM) == reference.parse(PROGRAM)


def test_an_unwritable_cache_directory_still_parses(tmp_path, monkeypatch):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache directory would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert parser.grammar_cache_path(GRAMMAR) is None
    assert parser.build_lark(GRAMMAR).parse(PROGRAM)


def test_the_cache_directory_is_private(cache_home):
    path = parser.grammar_cache_path(GRAMMAR)
    st = os.stat(Path(path).parent)
    assert st.st_uid == os.getuid() and st.st_mode & 0o077 == 0


def test_a_loose_directory_of_ours_is_closed_and_its_files_dropped(cache_home):
    directory = cache_home / "dslc"
    directory.mkdir(parents=True, mode=0o777)
    os.chmod(directory, 0o777)
    planted = directory / "grammar-planted.lark"
    planted.write_bytes(b"planted")
    os.chmod(directory, 0o777)
    assert parser.grammar_cache_path(GRAMMAR) is not None
    assert os.stat(directory).st_mode & 0o077 == 0
    assert not planted.exists()


def test_a_directory_owned_by_someone_else_is_not_used(cache_home, monkeypatch):
    parser.grammar_cache_path(GRAMMAR)
    monkeypatch.setattr(os, "getuid", lambda: os.stat(cache_home / "dslc").st_uid + 1)
    assert parser.grammar_cache_path(GRAMMAR) is None
    assert parser.build_lark(GRAMMAR).parse(PROGRAM)


def _forbid_unpickling(monkeypatch):
    """Record every unpickling (Lark catches what a failed load raises, so raising would not do)."""
    import pickle
    calls = []
    monkeypatch.setattr(pickle, "load", lambda *args, **kwargs: calls.append(args))
    return calls


def test_a_planted_pickle_is_never_unpickled(cache_home, monkeypatch):
    # A file with Lark's header but another's pickle (one that would run code): without the
    # digest dslc recorded when it wrote the cache, it is deleted unread and the parser rebuilt.
    path = Path(parser.grammar_cache_path(GRAMMAR))
    path.write_bytes(b"0" * 64 + b"\n" + b"cos\nsystem\n(S'echo planted'\ntR.")
    unpickled = _forbid_unpickling(monkeypatch)
    assert parser.build_lark(GRAMMAR).parse(PROGRAM)
    assert not unpickled, "a cache file that failed its checks was unpickled"
    assert not path.read_bytes().startswith(b"0" * 64)      # rewritten by a fresh build


def test_a_cache_file_changed_after_it_was_recorded_is_rebuilt(cache_home, monkeypatch):
    parser.build_lark(GRAMMAR)
    path = Path(parser.grammar_cache_path(GRAMMAR))
    path.write_bytes(path.read_bytes() + b"tampered")
    unpickled = _forbid_unpickling(monkeypatch)
    assert parser.build_lark(GRAMMAR).parse(PROGRAM)
    assert not unpickled, "a cache file that failed its checks was unpickled"


def test_a_cache_file_others_can_write_is_not_loaded(cache_home, monkeypatch):
    parser.build_lark(GRAMMAR)
    path = Path(parser.grammar_cache_path(GRAMMAR))
    os.chmod(path, 0o666)
    unpickled = _forbid_unpickling(monkeypatch)
    assert parser.build_lark(GRAMMAR).parse(PROGRAM)
    assert not unpickled, "a cache file that failed its checks was unpickled"
