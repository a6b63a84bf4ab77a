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
