"""Evaluation of parameter expressions and coercion of attribute values to op attribute kinds."""
from __future__ import annotations

from . import ast

BOOL_WORDS = {"true": True, "false": False}


class Word(str):
    """A bare name that is no parameter: an enum value such as `global`, `same`, `bilinear`."""


class Poisoned(Exception):
    """An error was already reported for this value; skip what depends on it silently."""


# The value of a parameter whose own definition had an error: reading it raises Poisoned, so
# one mistake yields one diagnostic, not one more at every use.
POISONED = object()


class EvalError(Exception):
    def __init__(self, message, span, help="", label=""):
        super().__init__(message)
        self.message, self.span, self.help, self.label = message, span, help, label


# Expressions that read a tensor's size: `channels(in)` is axis 1, `dim(x, 2)` any axis after N.
SHAPE_FUNCTIONS = {"channels": 1, "height": 2, "width": 3, "dim": None}


def _no_tensors(name):
    return None


def evaluate(expr, env: dict, tensor_type=_no_tensors):
    """Value of an expression: int, float, bool, tuple, str, Word, or ("call", name, args, kwargs).

    `tensor_type(name)` gives the TensorType of a tensor visible where the expression stands,
    or None when `name` is no tensor there; the shape functions (`channels(in)`) read it.
    """
    def sub(e):
        return evaluate(e, env, tensor_type)

    if isinstance(expr, (ast.Num, ast.Pair)):
        return expr.value
    if isinstance(expr, ast.Str):
        return expr.value
    if isinstance(expr, ast.Name):
        if expr.id in env:
            if env[expr.id] is POISONED:
                raise Poisoned()
            return env[expr.id]
        if expr.id in BOOL_WORDS:
            return BOOL_WORDS[expr.id]
        return Word(expr.id)
    if isinstance(expr, ast.TupleExpr):
        return tuple(sub(e) for e in expr.items)
    if isinstance(expr, ast.Neg):
        v = sub(expr.operand)
        _need_number(v, expr.operand.span, "`-`")
        return -v
    if isinstance(expr, ast.BinOp):
        a, b = sub(expr.left), sub(expr.right)
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
    if isinstance(expr, ast.Compare):
        return _compare(expr, env, tensor_type)
    if isinstance(expr, ast.BoolOp):
        # Both sides are evaluated (no short cut), so a mistake on either is reported.
        a, b = _boolean(expr.left, env, tensor_type, expr.op), _boolean(expr.right, env, tensor_type, expr.op)
        return (a and b) if expr.op == "and" else (a or b)
    if isinstance(expr, ast.Not):
        return not _boolean(expr.operand, env, tensor_type, "not")
    if isinstance(expr, ast.CallExpr) and expr.name in SHAPE_FUNCTIONS:
        return _shape_function(expr, env, tensor_type)
    if isinstance(expr, ast.CallExpr):
        kwargs, pos = {}, []
        for arg in expr.args:
            if arg.name is None:
                pos.append(sub(arg.value))
            else:
                kwargs[arg.name] = sub(arg.value)
        return ("call", expr.name, tuple(pos), kwargs)
    raise EvalError("not a value", getattr(expr, "span", None))


def evaluate_condition(expr, env: dict, tensor_type=_no_tensors) -> bool:
    """The value of an `if` condition: `true` or `false`, else an EvalError saying what it is."""
    return _boolean(expr, env, tensor_type, "if")


def _bound(expr, env, tensor_type):
    """Evaluate an operand of a condition, where a bare name must be a parameter (or `true`/
    `false`): an unbound one there is a misspelling, never a word."""
    if isinstance(expr, ast.Name) and expr.id not in env and expr.id not in BOOL_WORDS:
        from .diagnostics import did_you_mean
        names = [n for n in env if env[n] is not POISONED] + list(BOOL_WORDS)
        raise EvalError(f"unknown name `{expr.id}` in a condition", expr.span, label="not a parameter",
                        help=did_you_mean(expr.id, names)
                        or "conditions read parameters (" + (", ".join(f"`{n}`" for n in env) or "none here")
                        + ") and sizes such as `channels(in)`")
    return evaluate(expr, env, tensor_type)


def _boolean(expr, env, tensor_type, what):
    where = "a condition" if what == "if" else f"`{what}`"
    v = _bound(expr, env, tensor_type)
    if not isinstance(v, bool):
        example = "`stride == 1`" if isinstance(v, (int, float)) else "`mode == \"bilinear\"`"
        raise EvalError(f"{where} needs `true` or `false`, found {describe(v)}", expr.span,
                        help=f"compare the value to make a condition, e.g. {example}")
    return v


def _compare(expr, env, tensor_type):
    """`==` `!=` on values of one kind (numbers, booleans, sizes, words); `<` `<=` `>` `>=` on
    numbers. A word is compared as written in quotes (`mode == "bilinear"`), or by a bare word
    facing a parameter whose value is a word (`mode == bilinear`)."""
    def side(e, other):
        if isinstance(e, ast.Name) and e.id not in env and e.id not in BOOL_WORDS and expr.op in ("==", "!=") \
                and isinstance(other, ast.Name) and isinstance(env.get(other.id), str):
            return Word(e.id)
        return _bound(e, env, tensor_type)

    a, b = side(expr.left, expr.right), side(expr.right, expr.left)
    if expr.op in ("<", "<=", ">", ">="):
        for v, e in ((a, expr.left), (b, expr.right)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise EvalError(f"`{expr.op}` needs numbers, found {describe(v)}", e.span,
                                help="`<`, `<=`, `>`, `>=` order numbers; `==` and `!=` compare any values")
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[expr.op]
    if _kind(a) != _kind(b):
        raise EvalError(f"`{expr.op}` compares values of one kind, found {describe(a)} and {describe(b)}",
                        expr.span, help="compare numbers with numbers, sizes with sizes, words with words")
    return (a == b) if expr.op == "==" else (a != b)


def _kind(v) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "word"
    if isinstance(v, tuple):
        return "size"
    return "call"


def _shape_function(expr, env, tensor_type):
    """`channels(x)`, `height(x)`, `width(x)`, `dim(x, axis)`: a fixed size of a visible tensor."""
    name = expr.name
    axis_given = SHAPE_FUNCTIONS[name] is None
    usage = f"`{name}(x, axis)`" if axis_given else f"`{name}(x)`"
    want = 2 if axis_given else 1
    if len(expr.args) != want or any(a.name is not None for a in expr.args):
        raise EvalError(f"{usage} takes {want} positional argument{'s' * (want != 1)}, found {len(expr.args)}",
                        expr.span, help=f"e.g. `conv({name}(in) / 2, 1x1)`" if not axis_given else
                        "e.g. `dim(in, 2)` for the height of [N, C, H, W]")
    target = expr.args[0].value
    t = tensor_type(target.id) if isinstance(target, ast.Name) else None
    if t is None:
        raise EvalError(f"{usage} needs a tensor name, found {describe(evaluate(target, env, tensor_type))}",
                        target.span, help="inside a block the input is `in`; elsewhere name a tensor assigned with `=`")
    if axis_given:
        axis = evaluate(expr.args[1].value, env, tensor_type)
        if isinstance(axis, bool) or not isinstance(axis, int) or not 1 <= axis < t.rank:
            raise EvalError(f"`dim` axis must be a whole number from 1 to {t.rank - 1} for {t}, found {describe(axis)}",
                            expr.args[1].span, help="axis 0 is the batch; 1 is the channels")
    else:
        axis = SHAPE_FUNCTIONS[name]
        if axis >= t.rank:
            raise EvalError(f"`{name}` reads axis {axis}, but `{target.id}` is {t}", expr.span,
                            help="channels, height and width are axes 1, 2, 3 of [N, C, H, W]")
    size = t.shape[axis]
    if not isinstance(size, int):
        raise EvalError(f"`{target.id}` has the symbolic size `{size}` on axis {axis}", expr.span,
                        help="sizes used in arithmetic must be fixed; give the dimension a number or `--set` it")
    return size


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
