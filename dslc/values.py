"""Evaluation of parameter expressions and coercion of attribute values to op attribute kinds."""
from __future__ import annotations

from . import ast

BOOL_WORDS = {"true": True, "false": False}


class Word(str):
    """A bare name that is no parameter: an enum value such as `global`, `same`, `bilinear`."""


class EvalError(Exception):
    def __init__(self, message, span, help=""):
        super().__init__(message)
        self.message, self.span, self.help = message, span, help


def evaluate(expr, env: dict):
    """Value of an expression: int, float, bool, tuple, str, Word, or ("call", name, kwargs)."""
    if isinstance(expr, (ast.Num, ast.Pair)):
        return expr.value
    if isinstance(expr, ast.Str):
        return expr.value
    if isinstance(expr, ast.Name):
        if expr.id in env:
            return env[expr.id]
        if expr.id in BOOL_WORDS:
            return BOOL_WORDS[expr.id]
        return Word(expr.id)
    if isinstance(expr, ast.TupleExpr):
        return tuple(evaluate(e, env) for e in expr.items)
    if isinstance(expr, ast.Neg):
        v = evaluate(expr.operand, env)
        _need_number(v, expr.operand.span, "`-`")
        return -v
    if isinstance(expr, ast.BinOp):
        a, b = evaluate(expr.left, env), evaluate(expr.right, env)
        _need_number(a, expr.left.span, f"`{expr.op}`")
        _need_number(b, expr.right.span, f"`{expr.op}`")
        if expr.op in ("/", "//", "%") and b == 0:
            raise EvalError("division by zero", expr.right.span)
        if expr.op == "+":
            return a + b
        if expr.op == "-":
            return a - b
        if expr.op == "*":
            if abs(a) > 1e15 or abs(b) > 1e15:
                raise EvalError("number too large", expr.span)
            return a * b
        if expr.op == "//":
            return a // b
        if expr.op == "%":
            return a % b
        # `/` stays an integer when it divides exactly, so `c / 4` can be a channel count.
        if isinstance(a, int) and isinstance(b, int) and a % b == 0:
            return a // b
        return a / b
    if isinstance(expr, ast.CallExpr):
        kwargs, pos = {}, []
        for arg in expr.args:
            if arg.name is None:
                pos.append(evaluate(arg.value, env))
            else:
                kwargs[arg.name] = evaluate(arg.value, env)
        return ("call", expr.name, tuple(pos), kwargs)
    raise EvalError("not a value", getattr(expr, "span", None))


def _need_number(v, span, what):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise EvalError(f"{what} needs numbers, found {describe(v)}", span,
                        help="arithmetic works on numbers and block/network parameters")


def describe(v) -> str:
    if isinstance(v, bool):
        return f"`{str(v).lower()}`"
    if isinstance(v, Word):
        return f"the name `{v}`"
    if isinstance(v, tuple):
        return f"`{'x'.join(map(str, v))}`" if all(isinstance(x, int) for x in v) else f"{v}"
    if isinstance(v, str):
        return f'"{v}"'
    return f"`{v}`"


class CoerceError(Exception):
    pass


def coerce(kind: str, v, choices=()):
    """Turn a language value into the canonical form of an attribute kind (see Attr).

    None passes through: it is the default of attributes derived from others (a pool's stride).
    """
    if v is None:
        return None
    if kind == "int":
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                return int(v)
            raise CoerceError("a whole number")
        return v
    if kind == "float":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise CoerceError("a number")
        return float(v)
    if kind == "bool":
        if not isinstance(v, bool):
            raise CoerceError("`true` or `false`")
        return v
    if kind in ("pair", "pad", "window"):
        if kind == "pad" and v == "same":
            return "same"
        if kind == "window" and v == "global":
            return "global"
        if isinstance(v, int) and not isinstance(v, bool):
            return (v, v)
        if isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            return tuple(v)
        extra = {"pad": " or `same`", "window": " or `global`"}.get(kind, "")
        raise CoerceError(f"a size like `3`, `3x3` or `(3, 3)`{extra}")
    if kind == "enum":
        if isinstance(v, str) and v in choices:
            return str(v)
        raise CoerceError("one of " + ", ".join(f"`{c}`" for c in choices))
    if kind == "ints":
        vals = v if isinstance(v, tuple) else (v,)
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in vals):
            raise CoerceError("whole numbers")
        return tuple(vals)
    if kind == "floats":
        vals = v if isinstance(v, tuple) else (v,)
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vals):
            raise CoerceError("numbers")
        return tuple(float(x) for x in vals)
    if kind == "axis":
        if isinstance(v, bool) or not isinstance(v, int):
            raise CoerceError("an axis number")
        return v
    raise CoerceError(f"a value of kind {kind}")
