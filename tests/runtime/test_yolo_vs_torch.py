"""models/yolo_v1_tiny.net's loss against YOLO v1's eq. 3 written directly in torch: sums over
the grid with lambda_coord = 5 and lambda_noobj = 0.5, averaged over the images, with the
responsible predictors given (the zoo file's stated simplifications). With the weights copied
into torch (float64), the zoo file's loss in evaluation (dropout off) equals eq. 3, and so do
the loss and every parameter gradient of a training pass with the dropout step taken out (its
mask is the only thing torch could not replay).
"""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dslc.compiler import compile_file, compile_source
from dslc.diagnostics import Source
from dslc.runtime.model import Model

pytestmark = pytest.mark.slow      # Numba compiles the kernels on first use

MODEL = Path(__file__).resolve().parents[2] / "models" / "yolo_v1_tiny.net"
S, B, C = 4, 2, 3


def _feeds(n=3):
    rng = np.random.default_rng(1)
    image = rng.standard_normal((n, 3, 64, 64)).astype(np.float32)
    obj = np.zeros((n, S, S, B, 1), np.float32)
    box = rng.random((n, S, S, B, 4)).astype(np.float32)
    cls = np.zeros((n, S, S, C), np.float32)
    for i in range(n):          # a few objects per image, each in its cell's chosen predictor
        for _ in range(3):
            r, c, j = rng.integers(0, S), rng.integers(0, S), rng.integers(0, B)
            obj[i, r, c, :, 0] = 0
            obj[i, r, c, j, 0] = 1
            cls[i, r, c] = np.eye(C)[rng.integers(0, C)]
    return dict(image=image, box=box, obj=obj, cls=cls)


def _eq3(params, feeds):
    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    t = {k: torch.tensor(v, dtype=torch.float64) for k, v in feeds.items()}
    h = t["image"]
    for i in range(1, 7):
        pad = 0 if i == 5 else 1
        h = F.leaky_relu(F.conv2d(h, p[f"conv{i}.weight"], p[f"conv{i}.bias"], padding=pad), 0.1)
        if i <= 4:
            h = F.max_pool2d(h, 2)
    h = F.leaky_relu(F.linear(h.flatten(1), p["fc1.weight"], p["fc1.bias"]), 0.1)
    pred = F.linear(h, p["fc2.weight"], p["fc2.bias"]).view(-1, S, S, B * 5 + C)
    boxes = pred[..., :B * 5].reshape(-1, S, S, B, 5)
    xy, wh, conf = boxes[..., :2].sigmoid(), boxes[..., 2:4].sigmoid(), boxes[..., 4]
    one_obj, tb = t["obj"][..., 0], t["box"]                    # 1obj_ij
    one_cell = one_obj.sum(-1)                                  # 1obj_i
    coord = (one_obj * ((xy - tb[..., :2]) ** 2).sum(-1)).sum() \
        + (one_obj * ((wh.sqrt() - tb[..., 2:].sqrt()) ** 2).sum(-1)).sum()
    conf_obj = (one_obj * (conf - 1) ** 2).sum()
    conf_noobj = ((1 - one_obj) * conf ** 2).sum()
    classes = (one_cell * ((pred[..., B * 5:] - t["cls"]) ** 2).sum(-1)).sum()
    loss = (5 * coord + conf_obj + 0.5 * conf_noobj + classes) / pred.shape[0]
    loss.backward()
    return float(loss.detach()), {k: v.grad.numpy() for k, v in p.items()}


def test_loss_is_eq3_and_every_gradient_matches_torch():
    net, _ = compile_file(str(MODEL))
    model = Model(net, seed=0)
    feeds = _feeds()
    params = {k: v.copy() for k, v in model.params.items()}
    loss, ref = _eq3(params, feeds)
    np.testing.assert_allclose(model.forward(training=False, **feeds)["loss"], loss, rtol=1e-5)

    text = MODEL.read_text()
    assert text.count("-> dropout(0.5)") == 1
    plain, _ = compile_source(Source("yolo.net", text.replace("-> dropout(0.5)", "")))
    model = Model(plain, seed=0)
    model.load_params(params, strict=True)
    out = model.forward(training=True, **feeds)
    grads = model.backward()
    np.testing.assert_allclose(out["loss"], loss, rtol=1e-5)
    assert set(grads) == set(ref)
    for name, g in grads.items():
        scale = max(np.abs(ref[name]).max(), 1e-6)
        np.testing.assert_allclose(g, ref[name], rtol=1e-4, atol=1e-5 * scale, err_msg=name)
