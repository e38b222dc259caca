"""Randomness as declared ops: sample (the reparameterisation trick), gaussian_like.
Kernels: runtime/{cpu,cuda}/random.py.

Every draw comes from the run's one seeded stream (the kernel Context's `rng`, which dropout
uses too and checkpoints save), so a resumed run draws what the uninterrupted run would have.
"""
from __future__ import annotations

from .registry import OpDef, ShapeError, need_float, register
from .tensor import describe_difference, first_difference


@register
class Sample(OpDef):
    name, family = "sample", "random"
    min_inputs = max_inputs = 2
    doc = ("reparameterised Gaussian sample z = mu + exp(0.5 * logvar) * eps, eps ~ N(0, 1) drawn from "
           "the run's seeded stream in training; z = mu in eval")

    def shape(self, a, ins):
        mu, logvar = ins
        need_float(mu, "mean (mu)")
        need_float(logvar, "log-variance (logvar)")
        diff = first_difference(logvar, mu)
        if diff is not None:
            raise ShapeError(f"logvar {logvar} does not match the mean {mu}: {describe_difference(diff)}",
                             expected=str(mu), found=str(logvar),
                             help="mu and logvar are two heads of one size, e.g. `mu = h -> dense(20)` and "
                                  "`logvar = h -> dense(20)`")
        return mu

    def grad_inputs(self, a, ins):
        return (0, 1)


@register
class GaussianLike(OpDef):
    name, family = "gaussian_like", "random"
    doc = "standard normal noise of x's shape (torch.randn_like), drawn in training and eval; no gradient"

    def shape(self, a, ins):
        (x,) = ins
        need_float(x)
        return x

    def grad_inputs(self, a, ins):
        return ()
