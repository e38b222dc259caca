"""The results as markdown: the machine, the command, one row per network (against eager
PyTorch, then against torch.compile and onnxruntime), and the scaling series."""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass, field

from .measure import REPO_ROOT

COLUMNS = ("model", "batch", "parameters",
           "dslc train (samples/s)", "torch train (samples/s)", "train dslc/torch",
           "dslc infer (samples/s)", "torch infer (samples/s)", "infer dslc/torch",
           "dslc peak RSS (MiB)", "torch peak RSS (MiB)", "dslc cold start (s)", "dslc warm start (s)",
           "dslc warm start, step excluded (s)")
WORKLOAD_COLUMNS = ("model", "MACs/sample", "dslc train GFLOP/s", "torch train GFLOP/s")
COMPILED = "torch.compile"
ONNX = "onnxruntime"
FAST_PATH_COLUMNS = ("model", "batch",
                     "torch.compile train (samples/s)", "train dslc/compiled", "torch.compile train compile (s)",
                     "torch.compile infer (samples/s)", "infer dslc/compiled", "torch.compile infer compile (s)",
                     "onnxruntime infer (samples/s)", "infer dslc/onnxruntime")
SCALING_COLUMNS = ("network", "batch", "T", "dslc train (samples/s)", "torch train (samples/s)", "train dslc/torch",
                   "dslc peak RSS (MiB)", "torch peak RSS (MiB)")


@dataclass
class ModelResult:
    """What was measured for one network; a figure that could not be measured stays None."""
    name: str
    batch: int
    parameters: int | None = None
    macs_per_sample: int | None = None
    train: dict = field(default_factory=dict)        # framework -> samples/s
    infer: dict = field(default_factory=dict)
    peak_rss_mib: dict = field(default_factory=dict)
    cold_start_s: float | None = None
    warm_start_s: float | None = None
    warm_step_s: float | None = None                 # one training step's own time in the warm process
    compile_s: dict = field(default_factory=dict)    # "train"/"infer" -> torch.compile's one-off cost
    unavailable: dict = field(default_factory=dict)  # framework -> why its column could not be measured
    warmup_steps: dict = field(default_factory=dict)  # (kind, framework) -> untimed steps taken
    onnx_max_difference: float | None = None         # onnxruntime's outputs against dslc's, same batch
    errors: list = field(default_factory=list)

    def ratio(self, figures: dict, other: str = "torch") -> float | None:
        if figures.get("dslc") is None or not figures.get(other):
            return None
        return figures["dslc"] / figures[other]

    def train_gflops(self, framework: str) -> float | None:
        """Training FLOP rate, counting a step as 3 x the forward's 2 x MACs (forward, input and weight gradients)."""
        rate = self.train.get(framework)
        if rate is None or self.macs_per_sample is None:
            return None
        return 3 * 2 * self.macs_per_sample * rate / 1e9

    def warm_start_before_step(self) -> float | None:
        """Warm start less one step's own work: imports, parsing, planning and loading cached kernels."""
        if self.warm_start_s is None or self.warm_step_s is None:
            return None
        return max(0.0, self.warm_start_s - self.warm_step_s)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def results_table(results: list[ModelResult]) -> str:
    rows = []
    for r in results:
        rows.append((r.name, str(r.batch), _fmt(r.parameters, ","),
                     _fmt(r.train.get("dslc"), ",.1f"), _fmt(r.train.get("torch"), ",.1f"), _ratio(r.ratio(r.train)),
                     _fmt(r.infer.get("dslc"), ",.1f"), _fmt(r.infer.get("torch"), ",.1f"), _ratio(r.ratio(r.infer)),
                     _fmt(r.peak_rss_mib.get("dslc"), ",.0f"), _fmt(r.peak_rss_mib.get("torch"), ",.0f"),
                     _fmt(r.cold_start_s, ".1f"), _fmt(r.warm_start_s, ".1f"),
                     _fmt(r.warm_start_before_step(), ".1f")))
    return _markdown(COLUMNS, rows)


def _rate_or_reason(r: ModelResult, figures: dict, framework: str) -> str:
    if framework in r.unavailable:
        return f"unavailable: {r.unavailable[framework]}"
    return _fmt(figures.get(framework), ",.1f")


def fast_path_table(results: list[ModelResult]) -> str:
    rows = []
    for r in results:
        rows.append((r.name, str(r.batch),
                     _rate_or_reason(r, r.train, COMPILED), _ratio(r.ratio(r.train, COMPILED)),
                     _fmt(r.compile_s.get("train"), ".1f"),
                     _rate_or_reason(r, r.infer, COMPILED), _ratio(r.ratio(r.infer, COMPILED)),
                     _fmt(r.compile_s.get("infer"), ".1f"),
                     _rate_or_reason(r, r.infer, ONNX), _ratio(r.ratio(r.infer, ONNX))))
    return _markdown(FAST_PATH_COLUMNS, rows)


@dataclass
class ScalingResult:
    """One point of a scaling series: a network at one batch size and sequence length."""
    series: str
    model: str
    batch: int
    length: int | None = None                        # T, for a sequence network
    train: dict = field(default_factory=dict)        # framework -> samples/s
    peak_rss_mib: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.model} batch {self.batch}" + ("" if self.length is None else f" T {self.length}")

    def ratio(self) -> float | None:
        if self.train.get("dslc") is None or not self.train.get("torch"):
            return None
        return self.train["dslc"] / self.train["torch"]


def scaling_table(points: list[ScalingResult]) -> str:
    rows = [(p.model, str(p.batch), _fmt(p.length, "d"), _fmt(p.train.get("dslc"), ",.1f"),
             _fmt(p.train.get("torch"), ",.1f"), _ratio(p.ratio()),
             _fmt(p.peak_rss_mib.get("dslc"), ",.0f"), _fmt(p.peak_rss_mib.get("torch"), ",.0f")) for p in points]
    return _markdown(SCALING_COLUMNS, rows)


def warmup_lines(results: list[ModelResult]) -> list[str]:
    """One line per network: the untimed steps each framework took before each measurement."""
    lines = []
    for r in results:
        if r.warmup_steps:
            taken = ", ".join(f"{kind} {fw} {n}" for (kind, fw), n in r.warmup_steps.items())
            lines.append(f"- {r.name}: {taken}")
    return lines


def workload_table(results: list[ModelResult]) -> str:
    rows = [(r.name, _fmt(r.macs_per_sample, ","), _fmt(r.train_gflops("dslc"), ".2f"),
             _fmt(r.train_gflops("torch"), ".2f")) for r in results]
    return _markdown(WORKLOAD_COLUMNS, rows)


def _markdown(columns, rows) -> str:
    numeric = [i > 0 for i in range(len(columns))]       # every column but the name is right-aligned
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---:" if right else "---" for right in numeric) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def command_line() -> str:
    return "python -m bench" + ("" if len(sys.argv) < 2 else " " + shlex.join(sys.argv[1:]))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str:
    """The checked-out commit, with "+ local changes" when the tree differs from it (read-only git calls)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    if head.returncode != 0:
        return "unknown (not a git checkout)"
    return head.stdout.strip() + (" + local changes" if dirty.stdout.strip() else "")


def machine_lines(thread_pools: list[str], load_before: tuple, load_after: tuple, commit: str) -> list[str]:
    """commit: git_commit() taken before the run (the run rewrites its results file as it goes,
    which would read as a local change)."""
    import numba
    import numpy
    import torch
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {cores} cores available (nproc), {cpu_model()}",
        f"- load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f} "
        "(other work on the machine slows both frameworks; the ratios are the figures to compare)",
        f"- versions: Python {platform.python_version()}, numpy {numpy.__version__}, numba {numba.__version__}, "
        f"torch {torch.__version__}; dslc commit {commit}",
        "- threads: " + "; ".join(thread_pools),
    ]


# Sections of RESULTS.md that other commands write (python -m bench.ranks): a rewrite keeps them.
KEPT_SECTIONS = ("## Data-parallel overhead on MPI",)


def kept_sections(path: str) -> str:
    """The part of `path` (if it exists) from the first kept section's heading to the end."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return ""
    starts = [text.find("\n" + h) for h in KEPT_SECTIONS if text.find("\n" + h) >= 0]
    return text[min(starts):].rstrip() + "\n" if starts else ""


def render(results: list[ModelResult], machine: list[str], settings: str,
           scaling: list[ScalingResult] = (), warmup_rule: str = "") -> str:
    errors = [f"- {r.name}: {e}" for r in results for e in r.errors]
    errors += [f"- {p.name}: {e}" for p in scaling for e in p.errors]
    parts = [
        "# dslc vs PyTorch on the CPU",
        "",
        "Reproduce with:",
        "",
        "```",
        command_line(),
        "```",
        "",
        *machine,
        f"- settings: {settings}",
        *([f"- {warmup_rule}"] if warmup_rule else []),
    ]
    if results:
        parts += ["", results_table(results)]
    parts += [
        "",
        "How each figure is taken:",
        "- train: samples/s of one training step (forward, backward, SGD with momentum 0.9), the median over "
        "the timed steps; infer: the same for a forward pass in evaluation mode (torch under inference_mode). "
        "All frameworks run in one process on the same batch, alternating in rounds, after untimed warm-up steps "
        "(the rule above).",
        "- peak RSS: the peak resident memory (VmHWM) of a fresh process per framework that builds the "
        "network and trains a few steps; imports included.",
        "- cold start: a fresh process with an empty Numba cache (NUMBA_CACHE_DIR), from launch to the end of the "
        "first training step (imports, parsing, kernel compilation, the step); warm start: the same with the cache "
        "the cold run filled; step excluded: the warm start less the median time of that process's later steps, "
        "i.e. the start-up before a step's own work (kernels load from the cache during the first step).",
    ]
    if results:
        parts += [
            "",
            "Against PyTorch's compiled path and onnxruntime (ratios are dslc's samples/s over theirs):",
            "",
            fast_path_table(results),
            "",
            "- torch.compile: the torch.nn model wrapped in torch.compile (inductor, default mode), the same "
            "training step and inference under inference_mode; compile: the one-off cost of its warm-up (the warm-up "
            "steps' time less as many timed steps), with an empty inductor cache, excluded from samples/s.",
            "- onnxruntime: the dslc network exported by dslc.runtime.onnx_export with dslc's weights, run by "
            "onnxruntime's CPU provider with 2 intra-op threads and 1 inter-op thread, its threads not spinning "
            "between runs (session.intra_op.allow_spinning 0: spinning threads would take the cores from the "
            "framework timed next in the process).",
            "",
            "Work per sample (training counted as 3 x the forward's 2 x MACs):",
            "",
            workload_table(results),
        ]
        warmups = warmup_lines(results)
        if warmups:
            parts += ["", "Warm-up steps taken (untimed):", "", *warmups]
        diffs = [f"- {r.name}: {r.onnx_max_difference:.2g}" for r in results if r.onnx_max_difference is not None]
        if diffs:
            parts += ["", "onnxruntime's outputs against dslc's on the same batch (largest absolute difference):",
                      "", *diffs]
    if scaling:
        parts += [
            "",
            "Scaling: training samples/s and peak memory as the work grows (both frameworks alternating in one "
            "process for samples/s; peak RSS of a fresh process per framework, dslc's kernels from the cache):",
            "",
            scaling_table(list(scaling)),
        ]
    if errors:
        parts += ["", "Errors:", *errors]
    return "\n".join(parts) + "\n"
