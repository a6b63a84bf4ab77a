"""A value that must never reach a log, an exception, a repr or a report by accident.

Only `reveal()` gives the plaintext; everything else (str, repr, format, f-strings, pickling into
logs) shows a mask. Templates get the plaintext through the render environment's finalize hook, so
a config can carry it while `provisioner render` shows the mask from the very same template.
"""

from __future__ import annotations

import hmac

MASK = "********"


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str):
        if isinstance(value, Secret):
            value = value.reveal()
        if not isinstance(value, str):
            raise TypeError("Secret wraps a str")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return MASK

    def __repr__(self) -> str:
        return f"Secret({MASK})"

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            return hmac.compare_digest(self._value.encode(), other._value.encode())
        return NotImplemented

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __len__(self) -> int:
        return len(self._value)

    def __reduce__(self):  # pickling would copy the plaintext somewhere we do not control
        raise TypeError("Secret cannot be pickled")
