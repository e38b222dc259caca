"""models/fast_rcnn_head.net against the same network written in plain torch (Girshick's Fast
R-CNN head: backbone, RoI max pooling, fc6/fc7, class and box heads, cross-entropy + smooth L1).

With the zoo file's weights copied into torch (float64), the loss, both heads' outputs and every
parameter gradient agree, for boxes spread unevenly over the batch's images (two on one, three on
the other, out of order). RoI pooling is torchvision.ops.roi_pool written out in plain torch (the
case table's reference, tests/ops_cases.py).
"""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dslc.compiler import compile_file
from dslc.runtime.model import Model
from tests.ops_cases import _roi_pool

pytestmark = pytest.mark.slow      # Numba compiles the kernels on first use

MODEL = Path(__file__).resolve().parents[2] / "models" / "fast_rcnn_head.net"


def _feeds():
    rng = np.random.default_rng(3)
    image = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    rois = np.array([[1, 2.0, 3.0, 20.0, 25.0],
                     [0, 0.0, 0.0, 31.0, 31.0],
                     [1, 10.5, 4.2, 17.9, 30.0],
                     [0, 6.0, 12.0, 14.0, 16.0],
                     [1, 20.0, 20.0, 29.0, 27.0]], dtype=np.float32)
    label = np.array([0, 4, 2, 1, 3], dtype=np.int64)
    target = rng.standard_normal((5, 4)).astype(np.float32)
    return dict(image=image, rois=rois, label=label, target=target)


def _torch_head(params, feeds):
    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    x = torch.tensor(feeds["image"], dtype=torch.float64)
    rois = torch.tensor(feeds["rois"], dtype=torch.float64)
    f = F.max_pool2d(F.relu(F.conv2d(x, p["conv1.weight"], p["conv1.bias"], padding=1)), 2)
    f = F.relu(F.conv2d(f, p["conv2.weight"], p["conv2.bias"], padding=1))
    pooled = _roi_pool([f, rois], {}, {"output": (4, 4), "scale": 0.5})
    h = F.relu(F.linear(pooled.flatten(1), p["fc6.weight"], p["fc6.bias"]))
    h = F.relu(F.linear(h, p["fc7.weight"], p["fc7.bias"]))
    cls = F.linear(h, p["cls_score.weight"], p["cls_score.bias"])
    box = F.linear(h, p["bbox_pred.weight"], p["bbox_pred.bias"])
    loss = F.cross_entropy(cls, torch.tensor(feeds["label"])) + \
        F.smooth_l1_loss(box, torch.tensor(feeds["target"], dtype=torch.float64), beta=1.0)
    loss.backward()
    return float(loss.detach()), cls.detach().numpy(), box.detach().numpy(), {k: v.grad.numpy() for k, v in p.items()}


def test_loss_heads_and_every_gradient_match_torch():
    net, _ = compile_file(str(MODEL))
    model = Model(net, seed=0)
    feeds = _feeds()
    params = {k: v.copy() for k, v in model.params.items()}
    out = model.forward(training=True, **feeds)
    grads = model.backward()
    loss, cls, box, ref = _torch_head(params, feeds)
    np.testing.assert_allclose(out["loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(out["cls"], cls, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["box"], box, rtol=1e-4, atol=1e-5)
    assert set(grads) == set(ref)
    for name, g in grads.items():
        scale = max(np.abs(ref[name]).max(), 1e-6)
        np.testing.assert_allclose(g, ref[name], rtol=1e-4, atol=1e-5 * scale, err_msg=name)
