"""dslc against PyTorch on the CPU: `python -m bench` (see bench/cli.py for the options).

Six networks, each written once in the dslc language (bench/models/*.net) and once in
torch.nn (bench/torch_models.py), trained and run side by side in one process with the same
batch and the same thread budget; peak memory and dslc's compile times are measured in
subprocesses (bench/worker.py). The results table goes to bench/RESULTS.md.

Nothing here is imported by dslc itself, and this module imports nothing, so that the entry
points (bench/__main__.py, bench/worker.py) can set thread variables before numpy loads.
"""
