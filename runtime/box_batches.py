"""Batches for networks with unbatched inputs (`input rois: unbatched [R, 5]`, docs/LANGUAGE.md).

Such inputs hold rows over the whole batch, not one entry per sample: a detector's boxes, whose
first column is the index of the box's image in the batch, and the per-box labels and targets
that line up with them row for row. Inputs whose first axis has the same name (R) form one
*row group*; the group's *index input* is the one a roi op reads as its boxes.

A dataset keeps the rows of each sample with the sample: every array of a row group becomes an
object array with one entry per sample, that sample's rows (numpy arrays [k, ...]). Splitting,
shuffling and batching then treat them as any per-sample array, and `gather` turns a batch of
them back into the network's rows: the batch's rows concatenated in sample order, the index
column renumbered to each sample's position in the batch (0 to batch - 1).

Data layout (.npz): the per-sample inputs as usual, (N, ...); each unbatched input as (R, ...),
all rows of the file, the index input's first column holding the row's sample index in the file
(0 to N - 1). Every sample needs at least one row (a batch with no boxes has nothing to average
the per-box losses over).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dslc.runtime.errors import DataError

# Boxes per sample in synthetic data: a fixed count keeps R (and so the plan) the same every batch.
SYNTHETIC_BOXES = 4
ROI_OPS = ("roi_pool", "roi_align")


@dataclass(frozen=True)
class RowGroup:
    """Unbatched inputs sharing the leading axis `axis`. `index`: the input a roi op reads as boxes
    (its first column numbers samples), None when no roi op reads one directly. `members`: every
    input of the group, the index input first. `extent`: (height, width) of the image the boxes
    lie in, as the roi ops' feature maps and scales say (synthetic boxes are drawn inside it)."""
    axis: str
    index: str | None
    members: tuple
    extent: tuple | None


def row_groups(net) -> tuple:
    """The network's row groups, in input order; () for a network whose inputs are all batch-first."""
    axes = {}
    for name in net.inputs:
        shape = net.node(name).type.shape
        if shape and shape[0] != "N":
            axes.setdefault(shape[0], []).append(name)
    groups = []
    for axis, names in axes.items():
        index, extent = None, None
        for node in net.nodes():
            if node.op in ROI_OPS and node.inputs[1] in names:
                index = index or node.inputs[1]
                if node.inputs[1] == index:
                    h, w = net.node(node.inputs[0]).type.shape[2:]
                    scale = node.attrs["scale"]
                    if isinstance(h, int) and isinstance(w, int):
                        size = (h / scale, w / scale)
                        extent = size if extent is None else (min(extent[0], size[0]), min(extent[1], size[1]))
        members = tuple([index] * (index is not None) + [n for n in names if n != index])
        groups.append(RowGroup(axis, index, members, extent))
    return tuple(groups)


def unbatched_names(groups) -> set:
    return {m for g in groups for m in g.members}


def check_supported(groups) -> None:
    """Refuse row groups whose rows cannot be assigned to samples."""
    for g in groups:
        if g.index is None:
            raise DataError(f"the network's unbatched inputs {', '.join(f'`{m}`' for m in g.members)} (rows {g.axis}) "
                            "are not read as boxes by roi_pool or roi_align, so dslc run cannot tell which sample "
                            "each row belongs to",
                            "read the boxes input directly with roi_pool/roi_align (its first column is the "
                            "sample index), or feed the rows yourself through Model.forward and Model.backward")


def synthetic_rows(groups, specs: dict, n: int, rng: np.random.Generator, classes: int) -> dict:
    """Object arrays (one entry per sample) for every unbatched input: SYNTHETIC_BOXES boxes per
    sample inside the image, the other members drawn as load_inputs draws per-sample data."""
    check_supported(groups)
    out = {}
    for g in groups:
        height, width = g.extent or (32.0, 32.0)
        per = {m: np.empty(n, dtype=object) for m in g.members}
        for i in range(n):
            k = SYNTHETIC_BOXES
            x1 = rng.random(k) * width * 0.6
            y1 = rng.random(k) * height * 0.6
            x2 = np.minimum(x1 + width * (0.2 + 0.3 * rng.random(k)), width - 1)
            y2 = np.minimum(y1 + height * (0.2 + 0.3 * rng.random(k)), height - 1)
            boxes = np.stack([np.full(k, i), x1, y1, x2, y2], axis=1)
            per[g.index][i] = boxes.astype(np.float32)
            for m in g.members[1:]:
                spec = specs[m]
                shape = (k, *spec.shape)
                if spec.dtype == "int64":
                    per[m][i] = rng.integers(0, spec.classes or classes, size=shape, dtype=np.int64)
                elif spec.target:
                    per[m][i] = rng.random(shape, dtype=np.float32)
                else:
                    per[m][i] = rng.standard_normal(shape, dtype=np.float32)
        out.update(per)
    return out


def group_rows(groups, arrays: dict, n: int, file: str) -> dict:
    """The rows of each unbatched input (`arrays`, checked arrays [R, ...] from `file`) split by
    sample into object arrays of `n` entries, by the index input's first column."""
    check_supported(groups)
    out = {}
    for g in groups:
        boxes = arrays[g.index]
        sample = boxes[:, 0]
        whole = np.round(sample)
        bad = np.flatnonzero((whole != sample) | (whole < 0) | (whole >= n))
        if bad.size:
            r = int(bad[0])
            raise DataError(f"`{g.index}` row {r} in {file} names sample {sample[r]:g}, but {file} holds samples "
                            f"0 to {n - 1}",
                            f"the first column of `{g.index}` is the index of the row's sample in the file's "
                            "per-sample arrays, a whole number from 0 to N - 1")
        whole = whole.astype(np.int64)
        counts = np.bincount(whole, minlength=n)
        if n and counts.min() == 0:
            empty = int(np.argmin(counts))
            raise DataError(f"sample {empty} in {file} has no rows in `{g.index}` "
                            "(every sample needs at least one box)",
                            f"give every sample a box, or leave the samples without boxes out of {file}")
        order = np.argsort(whole, kind="stable")
        cuts = np.cumsum(counts)[:-1]
        for m in g.members:
            parts = np.split(arrays[m][order], cuts)
            obj = np.empty(n, dtype=object)
            for i, part in enumerate(parts):
                obj[i] = part
            out[m] = obj
    return out


def gather(feeds: dict, groups) -> dict:
    """A batch as the network takes it: each row group's per-sample rows concatenated in sample
    order, the index column renumbered to the sample's position in the batch. Feeds without
    object arrays (a network with no row groups) come back as they are."""
    if not groups or not any(getattr(v, "dtype", None) is np.dtype(object) for v in feeds.values()):
        return feeds
    out = dict(feeds)
    for g in groups:
        if g.index not in feeds:
            continue
        parts = feeds[g.index]
        boxes = np.concatenate(list(parts)).astype(np.float32, copy=True)
        boxes[:, 0] = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
        out[g.index] = np.ascontiguousarray(boxes)
        for m in g.members[1:]:
            if m in feeds:
                out[m] = np.ascontiguousarray(np.concatenate(list(feeds[m])))
    return out
