"""What goes wrong with a table or file in the trajectory standard: problems, the error, the warning."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a table: the column and the first bad row (0-based, in the file).

    read_as: the standard's name of `column` when the file's column is read under another name
    (`sae ... --column STANDARD=THEIRS`, or a recognised veRL / OpenRLHF name; `mapping`).
    """

    column: str | None
    row: int | None
    message: str
    read_as: str | None = None

    def __str__(self) -> str:
        where = []
        if self.column is not None:
            where.append(f"column {self.column!r}" + (f" (read as {self.read_as})" if self.read_as else ""))
        if self.row is not None:
            where.append(f"row {self.row}")
        return (", ".join(where) + ": " if where else "") + self.message


class TrajectoryError(ValueError):
    """A table or file that does not follow the standard; `problems` lists every finding."""

    def __init__(self, problems: list[Problem] | str, source: str | None = None):
        self.problems = [Problem(None, None, problems)] if isinstance(problems, str) else list(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        lines = [prefix + str(p) for p in self.problems]
        super().__init__(lines[0] if len(lines) == 1 else "\n".join([f"{len(lines)} problems:", *lines]))


class TrajectoryWarning(UserWarning):
    """A file that is read, but not quite as the standard says (no metadata, a newer minor version)."""


__all__ = ["Problem", "TrajectoryError", "TrajectoryWarning"]
