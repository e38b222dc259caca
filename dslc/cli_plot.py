"""`dslc plot`: the training curves of a `dslc run --metrics` file.

    dslc plot METRICS.jsonl -o curves.png
"""
from __future__ import annotations

import os

from .cli_inputs import _check_output_path, _log, _pyplot
from .compiler import UsageError
from .runtime.errors import DataError


def read_metrics(path: str) -> tuple[list[dict], int]:
    """(the last run's records, number of runs in the file) from a `dslc run --metrics` file.

    The file is appended to, so it may hold several runs: a record whose epoch is not above the
    one before starts a new run (a resumed run continues its epochs and stays one run)."""
    import json
    if not os.path.exists(path):
        raise UsageError(f"{path} does not exist", "give the file `dslc run --metrics FILE.jsonl` wrote")
    if not os.path.isfile(path):
        raise UsageError(f"{path} is not a file", "give the file `dslc run --metrics FILE.jsonl` wrote")
    runs: list[list[dict]] = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path} could not be read as text ({err})",
                        "give the JSON-lines file `dslc run --metrics FILE.jsonl` wrote") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as err:
            raise DataError(f"{path}:{number}: not a JSON object ({err.args[0] if err.args else err})",
                            "each line is one epoch's JSON object, as `dslc run --metrics` writes it") from None
        epoch = rec.get("epoch") if isinstance(rec, dict) else None
        if not isinstance(epoch, int) or isinstance(epoch, bool) or not isinstance(rec.get("train_loss"), (int, float)):
            raise DataError(f"{path}:{number}: an epoch record needs a whole `epoch` and a numeric `train_loss`",
                            "give the JSON-lines file `dslc run --metrics FILE.jsonl` wrote")
        if not runs or epoch <= runs[-1][-1]["epoch"]:
            runs.append([])
        runs[-1].append(rec)
    if not runs:
        raise DataError(f"{path} holds no epochs", "train with `dslc run ... --metrics FILE.jsonl` first")
    return runs[-1], len(runs)


def plot_command(args) -> int:
    _check_output_path(args.output, ".png", [args.metrics])
    records, runs = read_metrics(args.metrics)
    plt = _pyplot("plot")
    from matplotlib.ticker import MaxNLocator
    epochs = [r["epoch"] for r in records]

    def series(key):
        vals = [r.get(key) for r in records]
        pts = [(e, v) for e, v in zip(epochs, vals) if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return ([e for e, _ in pts], [v for _, v in pts]) if pts else None

    has_acc = series("train_accuracy") or series("val_accuracy")
    fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(10 if has_acc else 5.5, 4), squeeze=False)
    drawn = []
    panels = [(axes[0, 0], "loss", "loss")] + ([(axes[0, 1], "accuracy", "accuracy")] if has_acc else [])
    for ax, key, title in panels:
        for split, style in (("train", "-o"), ("val", "--s")):
            pts = series(f"{split}_{key}")
            if pts:
                ax.plot(*pts, style, markersize=3, label="validation" if split == "val" else "train")
                drawn.append(f"{split}_{key}")
        if key == "loss":
            # A run with several loss terms (a GAN's, a VAE's) draws each term's training curve too.
            terms = sorted({t for r in records for t in (r.get("train_terms") or {})})
            for t in terms:
                pts = [(r["epoch"], r["train_terms"][t]) for r in records if t in (r.get("train_terms") or {})]
                ax.plot([e for e, _ in pts], [v for _, v in pts], ":", linewidth=1, label=f"train {t}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(os.path.basename(args.metrics), fontsize=9)
    fig.tight_layout()
    fig.savefig(args.output, dpi=100)
    plt.close(fig)
    if runs > 1:
        _log(f"note: {args.metrics} holds {runs} runs (their epochs restart); plotted the last")
    last = records[-1]
    summary = [f"{k} {last[k]:.4g}" for k in ("train_loss", "val_loss", "train_accuracy", "val_accuracy")
               if isinstance(last.get(k), (int, float)) and not isinstance(last.get(k), bool)]
    print(f"wrote {args.output}: {', '.join(drawn)} over {len(records)} epoch{'s' * (len(records) != 1)} "
          f"(epoch {last['epoch']}: {', '.join(summary)})")
    return 0
