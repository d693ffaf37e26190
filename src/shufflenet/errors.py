"""Typed errors. Library code raises these; the CLI maps them to one line and an exit code."""

from __future__ import annotations


class ShuffleNetError(Exception):
    """Base of every error this package raises on purpose."""

    #: exit code the CLI uses: 2 for unusable input, 1 for a check that ran and failed
    exit_code = 2


class UnknownVariantError(ShuffleNetError, KeyError):
    """A variant name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class SpecError(ShuffleNetError, ValueError):
    """An architecture description, preprocessing recipe or registry entry that is not valid."""


class WeightsError(ShuffleNetError, ValueError):
    """Weights that do not fit the architecture, or a file that cannot be read as weights."""


class UnsafeFileError(ShuffleNetError, ValueError):
    """A file that would need code execution or escapes its folder; refused, never opened further."""


class MissingDependencyError(ShuffleNetError, ImportError):
    """An optional extra (torch, ...) is needed for this call but not installed."""


class CheckFailedError(ShuffleNetError):
    """A check ran and the result did not match (validation, tolerance, hash)."""

    exit_code = 1


def install_hint(extra: str) -> str:
    """How to install an extra, from the package index and from a checkout."""
    hint = f"pip install 'shufflenet[{extra}]' (from a checkout: pip install -e '.[{extra}]')"
    if extra == "torch":  # a bare `torch` resolves to a multi-GB CUDA build
        hint += "; torch==2.13.0 takes the CPU wheel"
    return hint
