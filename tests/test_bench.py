"""The benchmark (bench/): both versions of each network are the same architecture, the options
and the tables behave (fake measurements, a scripted clock), and the command runs end to end on
its smallest setting. Nothing here looks at a timing."""
import math
import os
import subprocess
import sys
from collections import Counter

import pytest

from bench import cli, gemm, measure, onednn, onnx_runner, profile, torch_models
from bench.report import (
    COLUMNS,
    FAST_PATH_COLUMNS,
    SCALING_COLUMNS,
    ModelResult,
    ScalingResult,
    fast_path_table,
    render,
)
from bench.suite import CIFAR_MODELS, IMAGENET_MODELS, MODELS, SCALING
from dslc.compiler import compile_file

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dslc_shapes(name):
    """(trainable parameter shapes, buffer shapes) of the .net file, as multisets."""
    net, _ = compile_file(MODELS[name].net_file, {})
    params, buffers = Counter(), Counter()
    for node in net.graph.nodes:
        for p in net.node(node).params.values():
            (params if p.trainable else buffers)[tuple(p.shape)] += 1
    return params, buffers


@pytest.mark.parametrize("name", list(MODELS))
def test_dslc_and_torch_networks_have_the_same_parameters(name):
    module = torch_models.TORCH_MODELS[name]()
    params, buffers = _dslc_shapes(name)
    # same count, and tensor for tensor the same shapes (dslc keeps torch's layouts)
    assert sum(c * math.prod(s) for s, c in params.items()) == torch_models.parameter_count(module)
    assert params == Counter(tuple(p.shape) for p in module.parameters())
    assert buffers == Counter(tuple(b.shape) for n, b in module.named_buffers() if not n.endswith("num_batches_tracked"))


def _run_bench(*args, timeout):
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_quick_bench_writes_a_complete_table(tmp_path):
    out = tmp_path / "results.md"
    done = _run_bench("--quick", "--out", str(out), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    assert "python -m bench --quick --out" in text
    assert "| " + " | ".join(COLUMNS) + " |" in text
    rows = [line for line in text.splitlines() if line.startswith("| lenet5_relu |")]
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert len(cells) == len(COLUMNS)
    assert "-" not in cells, f"a figure is missing: {rows[0]}"
    assert cells[2] == "61,706"
    assert rows[0] in done.stdout
    assert "| lenet5_relu | 16 | unavailable: skipped (--quick) |" in text
    assert "- warm-up: untimed steps per framework" in text


def test_unknown_model_is_a_usage_error():
    done = _run_bench("--models", "lenet5_relu,resnet18_cifr", timeout=120)
    assert done.returncode == 2
    assert "unknown model 'resnet18_cifr'; did you mean resnet18_cifar?" in done.stderr


# ---- options ---------------------------------------------------------------------------------

def test_the_default_run_is_every_network_and_the_scaling_table():
    args = cli.parse_args([])
    assert args.models == list(CIFAR_MODELS) + list(IMAGENET_MODELS)
    assert set(IMAGENET_MODELS) == {"resnet50_224", "densenet121_224"}
    assert args.scaling == list(SCALING)
    assert args.compile and args.steps == 20 and args.batch is None
    assert args.warmup == cli.WARMUP


def test_quick_stays_the_smallest_setting():
    args = cli.parse_args(["--quick"])
    assert (args.models, args.scaling, args.steps, args.batch) == (["lenet5_relu"], [], 3, 16)
    assert not args.compile


def test_a_selection_runs_just_what_it_names():
    args = cli.parse_args(["--imagenet", "--no-compile"])
    assert (args.models, args.scaling, args.compile) == (list(IMAGENET_MODELS), [], False)
    args = cli.parse_args(["--scaling"])
    assert (args.models, args.scaling) == ([], ["batch", "length"])
    args = cli.parse_args(["--scaling", "length", "--models", "lenet5_relu"])
    assert (args.models, args.scaling) == (["lenet5_relu"], ["length"])


@pytest.mark.parametrize("parse, argv, message", [
    (cli.parse_args, ["--scaling", "lenght"],
     "unknown scaling series 'lenght'; did you mean length? known series: batch, length"),
    (cli.parse_args, ["--models", " , "], "--models names no model"),
    (cli.parse_args, ["--steps", "0"], "--steps must be at least 1"),
    # python -m bench.profile
    (profile.parse_args, ["lenet5"], "unknown model 'lenet5'; did you mean lenet5_relu?"),
    (profile.parse_args, ["lenet5_relu", "--batch", "0"], "--batch must be at least 1, got 0"),
    (profile.parse_args, ["lenet5_relu", "--reps", "0"], "--reps must be at least 1, got 0"),
    (profile.parse_args, ["lenet5_relu", "--top", "-1"], "--top must be 0 (all) or more, got -1"),
    (profile.parse_args, ["lenet5_relu", "--by", "layer"], "invalid choice: 'layer'"),
    (profile.parse_args, ["lenet5_relu,lstm_lm"], "one model at a time, got lenet5_relu, lstm_lm"),
    # python -m bench.gemm
    (gemm.parse_args, ["--shapes", "64x64"], "--shapes: expected MxNxK with three positive integers"),
    (gemm.parse_args, ["--shapes", "64x0x64"], "got '64x0x64'"),
    (gemm.parse_args, ["--shapes", "8x8x8,,"], "got ''"),
    (gemm.parse_args, ["--reps", "0"], "--reps must be at least 1, got 0"),
    # python -m bench.onednn
    (onednn.parse_args, ["--models", "lstm"], "unknown model 'lstm'; did you mean lstm_lm?"),
    (onednn.parse_args, ["--steps", "0"], "--steps must be at least 1, got 0"),
])
def test_bad_options_are_usage_errors(parse, argv, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        parse(argv)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_scaling_series_points():
    spec, batch = SCALING["length"].point(256)
    assert (spec.name, batch, spec.x_shape, dict(spec.overrides)) == ("lstm_lm", 32, (256,), {"T": 256})
    assert spec.make_batch(2)[0].shape == (2, 256)
    spec, batch = SCALING["batch"].point(128)
    assert (spec, batch) == (MODELS["resnet18_cifar"], 128)
    assert SCALING["batch"].values[0] == 16 and SCALING["batch"].values[-1] == 256
    assert SCALING["length"].values[0] == 32 and SCALING["length"].values[-1] == 512


# ---- the warm-up rule, on a scripted clock ----------------------------------------------------

def _scripted(monkeypatch, durations):
    """step() takes durations[i] on measure's clock for the i-th call."""
    now = [0.0]
    monkeypatch.setattr(measure.time, "perf_counter", lambda: now[0])
    calls = iter(durations)

    def step():
        now[0] += next(calls)
    return step


def test_warm_up_runs_until_two_steps_agree(monkeypatch):
    rule = measure.WarmupRule(min_steps=2, max_steps=20, tolerance=0.10)
    step = _scripted(monkeypatch, [30.0, 2.0, 1.5, 1.05, 1.0, 1.0])
    assert measure.warm_up(step, rule) == pytest.approx([30.0, 2.0, 1.5, 1.05, 1.0])


def test_warm_up_waits_for_the_compile_ahead_helper_and_stops_at_its_cap(monkeypatch):
    rule = measure.WarmupRule(min_steps=2, max_steps=4, tolerance=0.10)
    busy = iter([True, False])
    step = _scripted(monkeypatch, [5.0, 1.0, 1.0, 1.0, 1.0])
    assert len(measure.warm_up(step, rule, busy=lambda: next(busy))) == 4     # [5, 1] unsettled, then busy once
    step = _scripted(monkeypatch, [5.0, 1.0, 3.0, 1.0, 3.0])
    assert len(measure.warm_up(step, rule)) == 4                              # never settles: the cap
    assert "at least 2, at most 4" in rule.describe()


def test_one_off_cost_is_the_warm_up_less_as_many_steps():
    assert measure.one_off_cost([61.0, 2.0, 1.0], [1.0, 1.0, 3.0]) == 61.0
    assert measure.one_off_cost([1.0, 1.0], [2.0, 2.0]) == 0.0


# ---- the tables, with fake measurements --------------------------------------------------------

def _cells(text, name, header):
    table = text[text.index("| " + " | ".join(header) + " |"):]
    row = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
    return [c.strip() for c in row.strip("|").split("|")]


def test_tables_render_every_column():
    r = ModelResult("resnet50_224", 16, parameters=25_557_032, macs_per_sample=4_100_000_000)
    r.train.update({"dslc": 8.0, "torch": 6.0, "torch.compile": 10.0})
    r.infer.update({"dslc": 30.0, "torch": 20.0, "torch.compile": 40.0, "onnxruntime": 24.0})
    r.compile_s.update({"train": 95.04, "infer": 40.0})
    r.warmup_steps.update({("train", "dslc"): 3, ("train", "torch.compile"): 4})
    r.peak_rss_mib.update({"dslc": 3000.0, "torch": 3500.0})
    r.onnx_max_difference = 3e-6
    points = [ScalingResult("length", "lstm_lm", 32, 512, {"dslc": 40.0, "torch": 50.0}, {"dslc": 900.0}),
              ScalingResult("batch", "resnet18_cifar", 256, None, {"dslc": 60.0}, {}, ["torch memory: failed"])]
    text = render([r], ["- machine: fake"], "fake settings", points, "warm-up: the rule")
    assert _cells(text, "resnet50_224", FAST_PATH_COLUMNS) == [
        "resnet50_224", "16", "10.0", "0.80x", "95.0", "40.0", "0.75x", "40.0", "24.0", "1.25x"]
    assert _cells(text, "resnet50_224", COLUMNS)[3:6] == ["8.0", "6.0", "1.33x"]
    assert _cells(text, "lstm_lm", SCALING_COLUMNS) == ["lstm_lm", "32", "512", "40.0", "50.0", "0.80x", "900", "-"]
    assert _cells(text, "resnet18_cifar", SCALING_COLUMNS)[2:6] == ["-", "60.0", "-", "-"]
    assert "- warm-up: the rule" in text
    assert "- resnet50_224: train dslc 3, train torch.compile 4" in text
    assert "- resnet50_224: 3e-06" in text
    assert "- resnet18_cifar batch 256: torch memory: failed" in text


def test_an_unavailable_column_says_why():
    r = ModelResult("lenet5_relu", 64)
    r.infer.update({"dslc": 30.0, "torch": 20.0})
    r.unavailable.update({"torch.compile": "no C++ compiler (g++) on PATH, which inductor needs",
                          "onnxruntime": "dslc.runtime.onnx_export is not in this checkout"})
    cells = _cells(fast_path_table([r]), "lenet5_relu", FAST_PATH_COLUMNS)
    assert cells[2] == cells[5] == "unavailable: no C++ compiler (g++) on PATH, which inductor needs"
    assert cells[8] == "unavailable: dslc.runtime.onnx_export is not in this checkout"
    assert cells[3] == cells[9] == "-"


def test_compile_is_unavailable_without_a_cxx_compiler(monkeypatch):
    from bench import torch_runner
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(torch_runner.shutil, "which", lambda name: None)
    assert torch_runner.compile_unavailable() == "no C++ compiler (g++ / c++ / clang++) on PATH, which inductor needs"
    monkeypatch.setattr(torch_runner.shutil, "which", lambda name: "/usr/bin/g++" if name == "g++" else None)
    assert torch_runner.compile_unavailable() is None


def test_onnx_is_unavailable_without_the_export(monkeypatch):
    real = onnx_runner.importlib.import_module

    def without_export(name):
        if name == "dslc.runtime.onnx_export":
            raise ImportError(name)
        return real(name)
    monkeypatch.setattr(onnx_runner.importlib, "import_module", without_export)
    assert onnx_runner.onnx_unavailable() == "dslc.runtime.onnx_export is not in this checkout"


def test_a_runner_that_cannot_be_built_marks_its_column_unavailable():
    r = ModelResult("lenet5_relu", 64)

    def build():
        raise RuntimeError("inductor: C++ compile error\nmany more lines")
    assert cli._optional_runner(r, "torch.compile", build) is None
    assert r.unavailable == {"torch.compile": "RuntimeError: inductor: C++ compile error"}
    assert not r.errors


def test_a_rewrite_keeps_the_data_parallel_section(tmp_path):
    """python -m bench rewrites RESULTS.md whole, but the section python -m bench.ranks's
    figures were put in stays, from its heading to the end."""
    from bench.report import kept_sections
    out = tmp_path / "RESULTS.md"
    assert kept_sections(str(out)) == ""
    out.write_text("# dslc vs PyTorch\n\nold table\n\n## Data-parallel overhead on MPI\n\n| ranks |\n")
    assert kept_sections(str(out)) == "\n## Data-parallel overhead on MPI\n\n| ranks |\n"
    out.write_text("# dslc vs PyTorch\n\nno such section\n")
    assert kept_sections(str(out)) == ""
