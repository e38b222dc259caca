"""`dslc export`: trained weights out to other tools.

    dslc export FILE --weights CKPT -o model.onnx [--set k=v ...] [--opset N]

The network is compiled and its weights loaded as `dslc predict` does (cli_inputs.load_trained:
the --set values the checkpoint records apply). Each format is one entry of FORMATS: the file
suffix it writes and the function that writes it from the loaded model and the arguments.
"""
from __future__ import annotations

from .cli_inputs import _check_output_path, load_trained
from .compiler import UsageError


def _write_onnx(model, args) -> str:
    from .runtime.onnx_export import DEFAULT_OPSET, export_onnx
    opset = DEFAULT_OPSET if args.opset is None else args.opset
    onnx_model = export_onnx(model.net, model.params, args.output, opset)
    g = onnx_model.graph
    return (f"wrote {args.output}: ONNX opset {opset}, {len(g.node)} nodes; inputs "
            + ", ".join(i.name for i in g.input) + "; outputs " + ", ".join(o.name for o in g.output))


def _write_safetensors(model, args) -> str:
    from .runtime.weights import save_torch_safetensors
    count, name_map = save_torch_safetensors(model, args.output)
    names = f"torchvision {name_map.network}'s names" if name_map is not None else "the network's own names"
    return f"wrote {args.output}: {count} tensors under {names} (torch.nn.Module.load_state_dict reads them)"


# format -> (the suffix of the file it writes, writer(model, args) -> the line to print)
FORMATS = {
    "onnx": (".onnx", _write_onnx),
    "safetensors": (".safetensors", _write_safetensors),
}


def export_command(args) -> int:
    suffix, write = FORMATS[args.format]
    _check_output_path(args.output, suffix, [args.file, args.weights])
    if args.opset is not None and args.format != "onnx":
        raise UsageError(f"--opset is for --format onnx, not {args.format}", "drop --opset")
    if args.format == "onnx":       # a bad opset or a missing onnx package, before compiling anything
        from .runtime.errors import RuntimeUserError
        from .runtime.onnx_export import DEFAULT_OPSET, check_opset
        try:
            check_opset(DEFAULT_OPSET if args.opset is None else args.opset)
        except RuntimeUserError as e:
            raise UsageError(e.message, help=e.hint) from None
    args.device = "cpu"
    model, _ = load_trained(args)
    try:
        line = write(model, args)
    except OSError as e:
        raise UsageError(f"cannot write {args.output}: {e.strerror or e}") from None
    print(line)
    return 0
