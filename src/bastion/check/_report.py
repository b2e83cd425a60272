"""`Report`: the results of a run, as a pass/fail table with the evidence of each failure."""

from __future__ import annotations

import dataclasses
import textwrap

from bastion.check._checks import Result

__all__ = ["Report"]


@dataclasses.dataclass(frozen=True)
class Report:
    """Every check's result, in the order they ran."""

    results: list[Result]

    @property
    def failed(self) -> list[Result]:
        return [result for result in self.results if result.failed]

    @property
    def ok(self) -> bool:
        """No check failed (skipped ones do not count against the service)."""
        return not self.failed

    def table(self, *, width: int = 100) -> str:
        """A plain-text table: one line per check, its evidence indented below it."""
        name_width = max((len(r.name) for r in self.results), default=5)
        lines = [f"{'check':<{name_width}}  result", f"{'-' * name_width}  ------"]
        for result in self.results:
            lines.append(f"{result.name:<{name_width}}  {result.status.upper()}")
            if result.evidence:
                lines += textwrap.wrap(
                    result.evidence,
                    width=width,
                    initial_indent="    ",
                    subsequent_indent="    ",
                    break_on_hyphens=False,
                )
        counts = {s: sum(r.status == s for r in self.results) for s in ("pass", "fail", "skip")}
        lines.append(f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped")
        return "\n".join(lines)
