"""The project's root exception and the ground package's own family."""

from __future__ import annotations

from dataclasses import dataclass


class HazardwatchError(Exception):
    """Root of every exception hazardwatch raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a site file: where it is and a sentence saying what to fix."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        at = f" [{self.path}]" if self.path else ""
        return f"{where}:{at} {self.message}"


class SiteFileError(HazardwatchError):
    """The site file is refused; ``problems`` lists every reason with its line."""

    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"site file {file} refused ({len(problems)} problem(s)):\n{lines}")


class SettingsError(HazardwatchError):
    """A connection setting (URL, address) is malformed."""

    def __init__(self, name: str, message: str) -> None:
        self.name = name
        super().__init__(f"{name}: {message}")


class DatabaseError(HazardwatchError):
    """Schema or database plumbing failed in a way the caller should report, not retry."""


class Unavailable(HazardwatchError):
    """A transient fault: the database (or another dependency) is away right now.

    Raised to callers that must answer at once rather than wait — an API command during a
    database outage answers 503 with this message. ``retry_after`` is a hint in seconds.
    """

    def __init__(self, what: str, message: str, retry_after: float = 5.0) -> None:
        self.what = what
        self.retry_after = retry_after
        super().__init__(message)
