"""dslc against PyTorch on the CPU: `python -m bench` (see bench/cli.py for the options).

Six CIFAR-sized networks (bench/models/*.net) and two ImageNet-sized ones from the zoo
(models/), each also written in torch.nn (bench/torch_models.py), trained and run side by side
in one process with the same batch and the same thread budget, in dslc, eager PyTorch and
torch.compile, and for inference onnxruntime on dslc's ONNX export; peak memory and dslc's
compile times are measured in subprocesses (bench/worker.py); a scaling table follows one
network as the batch or the sequence length grows. The results go to bench/RESULTS.md.

Nothing here is imported by dslc itself, and this module imports nothing, so that the entry
points (bench/__main__.py, bench/worker.py) can set thread variables before numpy loads.
"""
