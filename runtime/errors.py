"""User-facing runtime errors: things a user can fix (a bad data file, a damaged checkpoint).

Each error carries what went wrong (`message`, naming the file or thing) and how to fix it
(`hint`). The CLI prints them without a traceback, in the same shape as compiler diagnostics.
"""
from __future__ import annotations


class RuntimeUserError(Exception):
    """An error caused by the user's input rather than by a bug in dslc."""

    def __init__(self, message: str, hint: str):
        super().__init__(message, hint)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  = help: {self.hint}"


class DataError(RuntimeUserError):
    """A dataset could not be found, read, or does not fit the network."""


class CheckpointError(RuntimeUserError):
    """A checkpoint could not be read, or failed its integrity check."""


def divergence(epoch: int, step: int, what: str, plan, net) -> RuntimeUserError:
    """The error for a non-finite loss at (epoch, step), naming the first layer whose output went
    non-finite: one wording for the one-loss trainer and for each objective of several."""
    bad = plan.first_nonfinite()
    where = f"; first non-finite output: `{bad}` ({net.node(bad).op})" if bad else ""
    return RuntimeUserError(f"training diverged at epoch {epoch + 1}, step {step + 1}: {what}{where}",
                            "lower the learning rate (--lr), add `clip_grad_norm` to the train section, "
                            "or check the data for NaN values")
