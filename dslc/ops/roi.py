"""Region-of-interest pooling: roi_pool (Fast R-CNN) and roi_align (Mask R-CNN), with
torchvision.ops' semantics. Kernels: runtime/{cpu,cuda}/roi.py.

Both read two tensors whose first axes count different things: the feature maps [N, C, H, W],
one per sample, and the boxes [R, 5], one row per box over the whole batch (batch index, x1,
y1, x2, y2 in input-image coordinates), declared `input rois: unbatched [R, 5]`. The output
[R, C, oh, ow] has one row per box: everything after it (the heads, their labels, the loss) is
counted by R, the leading axis that the elaborator carries through ops that do not mix axes
(docs/LANGUAGE.md, "Inputs that are not batch-first"). These ops set `mixes_batches`: their shape
rule sees the real leading axes.

The boxes get no gradient (torchvision's neither): they are data, not activations.
"""
from __future__ import annotations

from .registry import Attr, OpDef, ShapeError, TensorType, need_float, register

BATCH = "N"


class _Roi(OpDef):
    family = "roi"
    min_inputs = max_inputs = 2
    mixes_batches = True
    init_looks_through = True

    def key_attrs(self, a):
        oh, ow = a["output"]
        return f"{oh}x{ow} scale {a['scale']:g}"

    def shape(self, a, ins):
        feats, boxes = ins
        need_float(feats, "feature map")
        need_float(boxes, "box tensor")
        example = f"`{self.name}(features, rois, output = 7x7, scale = 1/16)`"
        if feats.rank != 4 or feats.shape[0] != BATCH:
            raise ShapeError(f"{self.name} reads feature maps [N, C, H, W] as its first input, found {feats}",
                             expected="[N, C, H, W], one map per sample", found=str(feats),
                             help=f"pass the backbone's maps first and the boxes second: {example}")
        if boxes.rank != 2 or boxes.shape[1] != 5:
            raise ShapeError(f"{self.name} boxes must be [R, 5] (batch index, x1, y1, x2, y2), found {boxes}",
                             expected="[R, 5]", found=str(boxes),
                             help="declare them `input rois: unbatched [R, 5]`")
        if boxes.shape[0] == BATCH:
            raise ShapeError(f"{self.name} boxes are one row per box over the whole batch, but {boxes} counts "
                             "samples",
                             expected="[R, 5], R boxes over the batch (the first column is the sample index)",
                             found=f"{boxes}, one row per sample",
                             help="declare the boxes `input rois: unbatched [R, 5]`")
        oh, ow = a["output"]
        if oh < 1 or ow < 1:
            raise ShapeError(f"{self.name} output size must be positive, found {oh}x{ow}",
                             expected="e.g. 7x7", found=f"{oh}x{ow}", arg="output")
        if not a["scale"] > 0:
            raise ShapeError(f"{self.name} scale must be positive, found {a['scale']:g}",
                             expected="the feature map's size over the image's, e.g. 1/16 after four halvings",
                             found=f"scale = {a['scale']:g}", arg="scale")
        return TensorType((boxes.shape[0], feats.shape[1], oh, ow))

    def grad_inputs(self, a, ins):
        return (0,)


@register
class RoiPool(_Roi):
    name = "roi_pool"
    attrs = (Attr("output", "pair", doc="bins per box, height x width (7x7 in Fast R-CNN)"),
             Attr("scale", "float", 1.0, doc="feature-map size over image size (spatial_scale), e.g. 1/16"))
    doc = ("max over each of output bins of every box (torchvision.ops.roi_pool): features [N, C, H, W] and "
           "boxes [R, 5] (batch index, x1, y1, x2, y2 in image coordinates, scaled by `scale` and rounded) "
           "-> [R, C, oh, ow]; an empty bin is 0; the boxes get no gradient")


@register
class RoiAlign(_Roi):
    name = "roi_align"
    attrs = (Attr("output", "pair", doc="bins per box, height x width (7x7, 14x14 in Mask R-CNN)"),
             Attr("scale", "float", 1.0, doc="feature-map size over image size (spatial_scale)"),
             Attr("sampling_ratio", "int", -1, doc="samples per bin side; -1: ceil(box size / output) per box"),
             Attr("aligned", "bool", False, doc="shift the box by -0.5 pixel (Detectron2's aligned = True)"))
    doc = ("bilinear average over each bin of every box (torchvision.ops.roi_align): features [N, C, H, W] and "
           "boxes [R, 5] (batch index, x1, y1, x2, y2 in image coordinates) -> [R, C, oh, ow], "
           "sampling_ratio samples per bin side (-1: adaptive), aligned = true shifts by half a pixel")

    def key_attrs(self, a):
        extra = (f" s{a['sampling_ratio']}" if a["sampling_ratio"] > 0 else "") + (" aligned" if a["aligned"] else "")
        return super().key_attrs(a) + extra

    def shape(self, a, ins):
        out = super().shape(a, ins)
        if a["sampling_ratio"] == 0 or a["sampling_ratio"] < -1:
            raise ShapeError(f"roi_align sampling_ratio must be positive or -1, found {a['sampling_ratio']}",
                             expected="samples per bin side (2 in Mask R-CNN), or -1 for adaptive",
                             found=f"sampling_ratio = {a['sampling_ratio']}", arg="sampling_ratio")
        return out
