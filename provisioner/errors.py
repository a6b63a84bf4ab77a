"""Exceptions that carry a message fit for an operator, never a secret value."""


class ProvisionerError(Exception):
    """Base class; its message is shown to the operator as is."""

    exit_code = 1


class InputError(ProvisionerError):
    """Bad input from the operator (inventory, arguments): exit code 2."""

    exit_code = 2


class UnknownDevice(InputError):
    pass


class RenderError(ProvisionerError):
    """A config could not be rendered safely; names the device and field, never the value."""

    exit_code = 2


class NotConfirmed(ProvisionerError):
    """The device did not confirm in time (exit code 4 in the contract)."""

    exit_code = 4


class OtpRefused(ProvisionerError):
    """The one-time code was wrong, reused or no second factor is enrolled (exit code 5)."""

    exit_code = 5


class StateError(ProvisionerError):
    """The state database (--state / <home>/state.db) cannot be opened or used (exit code 1)."""

    exit_code = 1


class OutputError(InputError):
    """A file or directory given on the command line cannot be written; nothing was written (exit code 2)."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of a driver's or the OS's message: names files, hosts, tables; never a bound value."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0][:limit] if text else type(exc).__name__


def os_message(exc: OSError) -> str:
    """`path: No such file or directory`, the way the shell says it."""
    what = exc.strerror or type(exc).__name__
    return f"{exc.filename}: {what}" if exc.filename else what
