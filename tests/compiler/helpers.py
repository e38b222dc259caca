"""Helpers shared by the compiler tests."""
import textwrap


def golden(text: str) -> str:
    """A block of expected output written indented in the test, without its first newline."""
    return textwrap.dedent(text).lstrip("\n")
