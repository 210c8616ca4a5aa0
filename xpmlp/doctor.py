"""The MLP doctor: name the classic mistakes of an MLP, with the evidence and the fix.

A check looks at the data, the model, the loss or the training run and, when it recognises a
mistake, returns a :class:`Finding`: which check, how serious, what it saw (the numbers that
triggered it) and what to change, in one sentence each. Findings are gathered in a
:class:`Report`, which prints readably, turns into a pandas DataFrame and can be issued as
warnings (:class:`DoctorWarning`).

Severities: ``"error"`` - training cannot work as set up (targets the output cannot produce,
probabilities given where logits are expected); ``"warning"`` - it will train badly or not at
all (unscaled inputs, classes in sorted order, a learning rate that is far off); ``"info"`` -
worth a look, harmless alone.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

__all__ = ["Finding", "Report", "DoctorWarning", "SEVERITIES"]

SEVERITIES = ("error", "warning", "info")


class DoctorWarning(UserWarning):
    """A finding of the MLP doctor, issued as a warning (``fit(..., diagnose=True)``)."""


@dataclass(frozen=True)
class Finding:
    """One recognised mistake.

    Attributes
    ----------
    check : str
        The check's name, e.g. ``"unscaled_inputs"`` (stable: tests and filters use it).
    severity : "error", "warning" or "info"
    message : str
        What is wrong, in one sentence, with the numbers.
    fix : str
        What to change, in one sentence.
    evidence : dict
        The numbers that triggered it (Python scalars, short lists or strings), by name.
    when : str
        ``"before training"``, or ``"epoch N"`` (1-based) for a check made during training.
    """

    check: str
    severity: str
    message: str
    fix: str
    evidence: dict = field(default_factory=dict)
    when: str = "before training"

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    def __str__(self):
        return f"[{self.severity}] {self.check} ({self.when}): {self.message} Fix: {self.fix}"


class Report(list):
    """The findings of a diagnosis, most serious first; a list of :class:`Finding`.

    ``print(report)`` shows them one per paragraph with their evidence; ``report.to_frame()``
    gives a pandas DataFrame (one row per finding); ``report.ok`` is True when nothing of
    severity "error" or "warning" was found.
    """

    def __init__(self, findings=()):
        order = {s: i for i, s in enumerate(SEVERITIES)}
        super().__init__(sorted(findings, key=lambda f: order[f.severity]))  # sorted is stable

    @property
    def ok(self) -> bool:
        return not any(f.severity in ("error", "warning") for f in self)

    def checks(self) -> list[str]:
        """The names of the checks that found something, in the report's order."""
        return [f.check for f in self]

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([{"check": f.check, "severity": f.severity, "when": f.when, "message": f.message,
                              "fix": f.fix, "evidence": dict(f.evidence)} for f in self],
                            columns=["check", "severity", "when", "message", "fix", "evidence"])

    def warn(self, stacklevel: int = 2) -> None:
        """Issue every finding as a :class:`DoctorWarning`."""
        for f in self:
            warnings.warn(str(f), DoctorWarning, stacklevel=stacklevel + 1)

    def __str__(self):
        if not self:
            return "MLP doctor: no problems found."
        counts = ", ".join(f"{sum(f.severity == s for f in self)} {s}{'s' if sum(f.severity == s for f in self) != 1 else ''}"
                           for s in SEVERITIES if any(f.severity == s for f in self))
        lines = [f"MLP doctor: {counts}"]
        for i, f in enumerate(self, 1):
            lines += ["", f"{i}. [{f.severity}] {f.check} ({f.when})", f"   {f.message}", f"   Fix: {f.fix}"]
            if f.evidence:
                lines.append("   Evidence: " + ", ".join(f"{k}={_short(v)}" for k, v in f.evidence.items()))
        return "\n".join(lines)

    def __repr__(self):
        return f"Report({self.checks()!r})"


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)) and len(value) > 8:
        return "[" + ", ".join(_short(v) for v in value[:8]) + ", ...]"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)
