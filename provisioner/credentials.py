"""Passwords generated with `secrets` to a vendor's rules; never a factory default, never reused."""

from __future__ import annotations

import secrets
import string

from pydantic import BaseModel, ConfigDict, Field, model_validator

from provisioner.secret import Secret

# Safe in every config format we render: no quotes, backslash, '=', markup, spaces or '#'/';' comments.
SAFE_PUNCT = "-_.+!@%^*~"
DEFAULT_ALPHABET = string.ascii_letters + string.digits + SAFE_PUNCT


class PasswordRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # below 8 only for a PIN (digits-only alphabet): Gigaset DECT bases take a 4-digit system PIN as web login
    length: int = Field(default=20, ge=4, le=128)
    alphabet: str = DEFAULT_ALPHABET
    # character classes that must each appear at least once (some firmwares insist)
    require: list[str] = Field(default_factory=lambda: ["lower", "upper", "digit"])

    @model_validator(mode="after")
    def _check(self):
        if len(set(self.alphabet)) < 10:
            raise ValueError("alphabet needs at least 10 distinct characters")
        if self.length < 8 and not set(self.alphabet) <= set(string.digits):
            raise ValueError("a length below 8 is only for a PIN: alphabet must be digits only")
        for cls in self.require:
            if cls not in CLASSES:
                raise ValueError(f"unknown character class {cls!r} (one of {', '.join(CLASSES)})")
            if not set(CLASSES[cls]) & set(self.alphabet):
                raise ValueError(f"alphabet has no {cls} character")
        return self


CLASSES = {
    "lower": string.ascii_lowercase,
    "upper": string.ascii_uppercase,
    "digit": string.digits,
    "punct": SAFE_PUNCT,
}


def generate(rule: PasswordRule, forbidden: set[str] = frozenset()) -> Secret:
    """A password to `rule`; `forbidden` holds values it must never equal (factory defaults)."""
    alphabet = "".join(sorted(set(rule.alphabet)))
    for _ in range(1000):
        value = "".join(secrets.choice(alphabet) for _ in range(rule.length))
        if value in forbidden:
            continue
        if all(set(value) & set(CLASSES[c]) for c in rule.require):
            return Secret(value)
    raise RuntimeError("password rule cannot be satisfied")  # unreachable for a validated rule
