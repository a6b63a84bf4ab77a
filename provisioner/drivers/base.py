"""One small driver interface for everything the agent acts on (NAPALM-style, one module per platform).

A driver talks to one device. What it should hold (`desired`) is a driver-specific object built by the
operations from the inventory and the store; what it does hold is read back as a flat mapping
`key -> value`, and `compare()` turns the two into a list of `Drift`. Values may be:

- plain text (compared as is),
- a `Secret` (compared in constant time, never shown),
- a `Verifier` (what the device keeps instead of a secret, e.g. a password hash: it can check a
  candidate but not give it back),
- `WRITE_ONLY` (the device offers no way to read it back: reported, never counted as drift),
- `NOT_REPORTED` (this firmware does not return the value at all, e.g. a read-back key an older FRITZ!OS
  lacks: reported as "not reported", never counted as drift).

Every error a driver raises is a `DriverError` (exit code 4: the device did not do or confirm it) with a
message fit for an operator: what failed, on which device, and what to do. No message ever holds a
secret; `Secret` masks itself and drivers scrub command output before quoting it.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

from provisioner.errors import NotConfirmed, ProvisionerError
from provisioner.secret import MASK, Secret


# ---- errors --------------------------------------------------------------------------------------

class DriverError(ProvisionerError):
    """The device did not do what was asked (or could not be asked): exit code 4."""

    exit_code = 4


class Unreachable(DriverError):
    """No answer on the management address (down, wrong address, firewalled, service disabled)."""


class AuthenticationFailed(DriverError):
    """The device refused the login (wrong or changed password, unknown user)."""


class NotAuthorized(DriverError):
    """Logged in, but the account lacks the right for an action."""


class PinMismatch(DriverError):
    """The device's SSH host key or TLS certificate is not the one pinned on first contact."""


class ConfirmationTimeout(NotConfirmed, DriverError):
    """The device asked for a confirmation on site that did not come in time."""


class NotSupported(DriverError):
    """The platform offers no way to do this (the message says what to do by hand instead)."""

    exit_code = 2


class ActionFailed(DriverError):
    """The device answered with an error to an action."""


class PushIncomplete(DriverError):
    """A push stopped after it had written part of the configuration (exit code 4: not confirmed).

    `result` holds what was written before it stopped; the message names it too."""

    def __init__(self, message: str, result: "PushResult"):
        super().__init__(message)
        self.result = result


# ---- values and drift ------------------------------------------------------------------------------

class _WriteOnly:
    __slots__ = ()

    def __repr__(self) -> str:
        return "WRITE_ONLY"


WRITE_ONLY = _WriteOnly()  # the device cannot give this value back (a password behind a setter only)


class _NotReported:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_REPORTED"


NOT_REPORTED = _NotReported()  # this firmware does not return the value (an older interface version)


class Verifier(abc.ABC):
    """What a device keeps in place of a secret (a hash): it can check a candidate, not reveal it."""

    @abc.abstractmethod
    def matches(self, secret: Secret) -> bool: ...

    def describe(self) -> str:
        return "hash"


Value = Any  # str | int | bool | None | Secret | Verifier | WRITE_ONLY


def show(v: Value) -> str:
    """A value as an operator may see it: secrets masked, hashes named, nothing revealed."""
    if v is None:
        return "(absent)"
    if isinstance(v, Secret):
        return MASK
    if isinstance(v, Verifier):
        return v.describe()
    if v is WRITE_ONLY:
        return "(not readable)"
    if v is NOT_REPORTED:
        return "(not reported)"
    return str(v)


@dataclass(frozen=True)
class Drift:
    key: str
    kind: str  # missing | differs | unexpected | unverifiable
    expected: str  # shown (masked) values
    actual: str
    detail: str = ""

    @property
    def counts(self) -> bool:
        """Unverifiable values are reported, but are no drift."""
        return self.kind != "unverifiable"

    def as_dict(self) -> dict:
        return {"key": self.key, "kind": self.kind, "expected": self.expected, "actual": self.actual,
                "detail": self.detail}


def _equal(expected: Value, actual: Value) -> bool | None:
    """True/False, or None when the device cannot tell (write-only, not reported)."""
    if actual is WRITE_ONLY or actual is NOT_REPORTED:
        return None
    if isinstance(expected, Secret):
        if isinstance(actual, Verifier):
            return actual.matches(expected)
        if isinstance(actual, Secret):
            return actual == expected
        if isinstance(actual, str):
            return Secret(actual) == expected
        return False
    if isinstance(actual, Secret):
        return isinstance(expected, str) and actual == Secret(expected)
    return expected == actual


def compare_states(expected: Mapping[str, Value], actual: Mapping[str, Value],
                   owned: Callable[[str], bool] = lambda k: False, details: Mapping[str, str] | None = None
                   ) -> list[Drift]:
    """Drift between what should be and what is. `owned(key)` says whether a key present on the device
    but not expected is one of ours to remove (a stale client we created): then it is drift."""
    out: list[Drift] = []
    details = details or {}
    for key, want in expected.items():
        if key not in actual or actual[key] is None:
            if want is None:
                continue
            out.append(Drift(key, "missing", show(want), "(absent)", details.get(key, "")))
            continue
        same = _equal(want, actual[key])
        if same is None:
            why = ("this firmware does not report it" if actual[key] is NOT_REPORTED
                   else "the device offers no way to read this back")
            out.append(Drift(key, "unverifiable", show(want), show(actual[key]), details.get(key, why)))
        elif not same:
            out.append(Drift(key, "differs", show(want), show(actual[key]), details.get(key, "")))
    extra: dict[str, list[str]] = {}  # one finding per object (client[x].a, client[x].b -> client[x])
    for key, have in actual.items():
        if key not in expected and have is not None and owned(key):
            extra.setdefault(key.rsplit(".", 1)[0], []).append(key)
    for obj, keys in extra.items():
        shown = show(actual[keys[0]]) if keys == [obj] else f"present ({len(keys)} settings)"
        out.append(Drift(obj, "unexpected", "(absent)", shown, details.get(obj, "created by the agent, no longer "
                                                                          "in the inventory: the next push removes it")))
    return out


@dataclass
class PushResult:
    changed: list[str] = field(default_factory=list)  # what was written (keys or file names)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # facts the device told us (internal numbers, ...)

    def as_dict(self) -> dict:
        return {"changed": self.changed, "unchanged": self.unchanged, "removed": self.removed, "notes": self.notes}


Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


# ---- the interface ---------------------------------------------------------------------------------

class Driver(abc.ABC):
    """One device. Use as a context manager: `with Driver(...) as d: d.push(desired)`.

    Capabilities name what the platform can do: facts, push, read_back, resync, reboot, factory_reset
    (and platform words such as trunk, registrar, config_password, admin_password). A method outside the
    capabilities raises NotSupported with what to do by hand.
    """

    name: ClassVar[str] = "abstract"
    capabilities: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, progress: Progress | None = None):
        self.progress: Progress = progress or _quiet

    # connection lifecycle (drivers connect lazily; close is always safe)
    def open(self) -> None:
        return None

    def close(self) -> None:
        return None

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def label(self) -> str:
        """How messages name the device."""
        return self.name

    def _unsupported(self, what: str, how: str = "") -> NotSupported:
        return NotSupported(f"{self.label}: {self.name} cannot {what}" + (f"; {how}" if how else ""))

    # ---- getters -------------------------------------------------------------------------------
    @abc.abstractmethod
    def facts(self) -> dict[str, Any]:
        """Model, firmware, serial, MAC and the exposure-relevant switches, as far as the platform tells."""

    def read_back(self) -> dict[str, Value]:
        """What the device holds now, as flat keys (the same keys as expected())."""
        raise self._unsupported("read its configuration back")

    def expected(self, desired: Any) -> dict[str, Value]:
        """The flat keys `desired` means on this platform (what read_back() should show after push)."""
        raise self._unsupported("describe a desired state")

    def owned(self, key: str) -> bool:
        """A key on the device that the agent created and would remove if no longer desired."""
        return False

    def compare(self, desired: Any) -> list[Drift]:
        """Drift between `desired` and the device (NAPALM's compare_config, as data)."""
        return compare_states(self.expected(desired), self.read_back(), self.owned, self.drift_details())

    def drift_details(self) -> dict[str, str]:
        return {}

    # ---- actions -------------------------------------------------------------------------------
    def push(self, desired: Any) -> PushResult:
        raise self._unsupported("take a pushed configuration")

    def resync(self) -> None:
        raise self._unsupported("be told to fetch its configuration")

    def reboot(self) -> None:
        raise self._unsupported("be rebooted remotely")

    def factory_reset(self) -> None:
        raise self._unsupported("be reset to factory settings remotely")


def scrub(text: str, secrets: list[Secret] | tuple[Secret, ...]) -> str:
    """Remove every secret value from text a device sent back (command output, error descriptions)."""
    for s in secrets:
        v = s.reveal() if isinstance(s, Secret) else str(s)
        if v:
            text = text.replace(v, MASK)
    return text
