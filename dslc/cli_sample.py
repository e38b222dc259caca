"""`dslc sample`: text from a trained character model.

    dslc sample FILE --weights CKPT --prime TEXT --length N --temperature T [--seed S]
"""
from __future__ import annotations

import sys

import numpy as np

from .cli_inputs import _log, _weights_list, data_inputs, load_trained
from .compiler import UsageError, compile_file
from .diagnostics import CompileError
from .runtime.errors import CheckpointError, DataError


def _text_model(net, vocab: str, weights: str) -> tuple[str, str]:
    """(the input of character ids, the output of next-character scores) of a character model."""
    names = data_inputs(net)
    if len(names) != 1 or net.node(names[0]).type.dtype != "int64" or len(net.node(names[0]).type.shape) != 2:
        shown = ", ".join(f"{n} {net.node(n).type}" for n in names)
        raise UsageError(f"dslc sample needs a character model (one int64 input of shape [N, T]); "
                         f"{net.name} has {shown}", "sample from a model like models/charlstm.net")
    outputs = [net.tensor_name(o) for o in net.outputs]
    for o in outputs:
        shape = net.node(net.tensors.get(o, o)).type.shape
        if len(shape) == 3 and (not isinstance(shape[2], int) or shape[2] >= len(vocab)):
            return names[0], o
    raise UsageError(f"{net.name} has no output of next-character scores [N, T, vocabulary] for the "
                     f"{len(vocab)} characters {weights} records "
                     f"(outputs: {', '.join(f'{o} {net.node(net.tensors.get(o, o)).type}' for o in outputs)})",
                     "sample from a character model trained with `dslc run --data chars` or a .txt file")


def _draw(scores: np.ndarray, temperature: float, rng) -> int:
    """A character id from the softmax of scores / temperature (0: the likeliest)."""
    scores = np.asarray(scores, dtype=np.float64)
    if temperature == 0:
        return int(np.argmax(scores))
    z = scores / temperature
    p = np.exp(z - z.max())
    return int(rng.choice(len(p), p=p / p.sum()))


def sample_command(args) -> int:
    """Characters from a trained character model, one at a time: each is drawn from the softmax
    of the scores for the last position (divided by the temperature) and appended to the text.

    A model that is a chain of embed, recurrent, dense and elementwise layers is stepped one
    character at a time with its recurrent state carried (runtime/stepper.py): the prime, then
    each new character, moves the state on by one step, so the text continues from all of it.
    Other models (bidirectional layers, attention, ...), or any with --window W given, re-run the
    model over the last W characters (default: the T it was trained on) from the zero state per
    character: the compiled kernels take a whole sequence and give no final state back."""
    if args.length < 0:
        raise UsageError(f"--length {args.length}: give 0 or more characters", "e.g. --length 200")
    if not args.temperature >= 0 or not np.isfinite(args.temperature):
        raise UsageError(f"--temperature {args.temperature}: give a number >= 0 (0: always the likeliest)",
                         "e.g. --temperature 0.8")
    if args.window is not None and args.window < 1:
        raise UsageError(f"--window {args.window}: give 1 or more characters", "e.g. --window 64")
    trained_length = {}

    def variable_length(net, overrides):
        """The overrides without the one fixing the text input's length, so any window compiles."""
        names = data_inputs(net)
        if len(names) != 1 or len(net.node(names[0]).type.shape) != 2:
            return overrides
        length = net.node(names[0]).type.shape[1]
        trained_length["T"] = length if isinstance(length, int) else None
        for k, v in overrides.items():
            if v == length:
                rest = {j: w for j, w in overrides.items() if j != k}
                try:
                    free, _ = compile_file(args.file, rest)
                except (CompileError, UsageError):    # that value was needed: keep it
                    continue
                if not isinstance(free.node(names[0]).type.shape[1], int):
                    return rest
        return overrides

    model, meta = load_trained(args, adjust=variable_length)
    weights = _weights_list(args)[0]
    vocab = meta.get("vocab")
    if not isinstance(vocab, str) or not vocab:
        raise CheckpointError(f"{weights} records no vocabulary: it was not trained on text by `dslc run`",
                              "train the model with `dslc run FILE --data chars` (or a .txt file) and sample "
                              "from its last.ckpt")
    net = model.net
    name, output = _text_model(net, vocab, weights)
    prime = args.prime if args.prime is not None else ("\n" if "\n" in vocab else vocab[0])
    if not prime:
        raise UsageError("--prime is empty: the model needs at least one character to continue",
                         f"e.g. --prime {vocab[len(vocab) // 2]!r}")
    index = {c: i for i, c in enumerate(vocab)}
    unknown = sorted({c for c in prime if c not in index})
    if unknown:
        raise DataError(f"--prime has character{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} "
                        f"that the training text did not: the model has no id for them",
                        f"use characters of the training text ({len(vocab)} distinct)")
    fixed = isinstance(net.node(name).type.shape[1], int)
    window = args.window or trained_length.get("T") or 100
    if fixed:
        window = net.node(name).type.shape[1]
    ids = [index[c] for c in prime]
    rng = np.random.default_rng(args.seed)
    out_chars = []
    from .runtime.stepper import Stepper, unsupported
    why = "--window was given" if args.window is not None else unsupported(net, name, output)
    stepper = Stepper(model, name, output) if why is None else None
    scores = None
    if stepper is not None:
        for i in ids:
            scores = stepper.step(i)
    for _ in range(args.length):
        if stepper is not None:
            nxt = _draw(scores[:len(vocab)], args.temperature, rng)
            ids.append(nxt)
            out_chars.append(vocab[nxt])
            scores = stepper.step(nxt)
            continue
        if fixed and len(ids) < window:
            raise UsageError(f"{net.name} takes exactly {window} characters at a time, and --prime has {len(ids)}",
                             f"give a --prime of at least {window} characters")
        context = np.array(ids[-window:], dtype=np.int64)[None]
        scores = model.forward(**{name: context})[output][0, -1, :len(vocab)].astype(np.float64)
        nxt = _draw(scores, args.temperature, rng)
        ids.append(nxt)
        out_chars.append(vocab[nxt])
    how = "the recurrent state carried from character to character" if stepper is not None else \
        f"window {window} (the model re-run over the last {window} characters per character: {why})"
    _log(f"sampled {args.length} character{'s' * (args.length != 1)} after a {len(prime)}-character prime, "
         f"temperature {args.temperature:g}, seed {args.seed}, {how}")
    sys.stdout.write(prime + "".join(out_chars) + "\n")
    return 0
