"""Errors and problem records shared by every data layout.

Data problems are first *collected* as :class:`Problem` records, because ``verify`` must report
all of them; ``load_task`` then turns the first one into a :class:`DataError`. Keeping a single
record type means both paths print exactly the same message for the same fault.
"""
from __future__ import annotations

from dataclasses import dataclass


class DataError(ValueError):
    """Bad or missing data, or a data option that does not fit the data.

    The message always names the file (and line) or the option at fault and what was expected,
    so a user can fix the input without reading code. Subclasses ``ValueError`` so callers that
    only know "bad input" still catch it; constructible from one string so that PyTorch's
    DataLoader workers can re-raise it in the main process.
    """


class DataWarning(UserWarning):
    """A data oddity that loading survives (duplicate list lines, stray files, empty classes)."""


@dataclass(frozen=True)
class Problem:
    """One finding about the data. ``message`` is complete on its own (file, line, expectation)."""

    kind: str  # missing | empty | malformed | label_range | conflict | unreadable | unknown_class | duplicate | ...
    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        return self.message


def location(file: object, line: int | None = None) -> str:
    """``file:line`` (or ``file``) — the prefix every data message starts with."""
    return f"{file}:{line}" if line is not None else f"{file}"


def raise_first(problems: list[Problem], hint: str = "") -> None:
    """Raise a DataError for the first problem, saying how many more there are."""
    if not problems:
        return
    message = problems[0].message
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''}"
        message += f"; {hint})" if hint else ")"
    raise DataError(message)


def printable(text: object) -> str:
    """``str(text)`` safe to print and to encode as UTF-8.

    On POSIX, Python decodes file-name bytes that are not UTF-8 to lone surrogates
    (``'caf\\udce9.jpg'``), which crash ``print`` and ``str.encode``; here they become ``\\xNN``
    (``'caf\\xe9.jpg'``), which shows the user exactly which byte is at fault.
    """
    text = str(text)
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no file name decoded to
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def is_utf8(text: str) -> bool:
    """Whether ``text`` (e.g. a file name from the OS) came from valid UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
