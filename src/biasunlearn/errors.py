"""Exceptions raised by biasunlearn.

Every error meant for a user derives from :class:`BiasUnlearnError`; the CLI prints its message
(which names the file, record, field or flag at fault) and exits with status 2.
"""

from __future__ import annotations


class BiasUnlearnError(Exception):
    """Base class of every user-facing error."""


class DataError(BiasUnlearnError):
    """A data file is missing, malformed or fails its checksum."""


class ModelError(BiasUnlearnError):
    """A model spec cannot be resolved or loaded."""


class ConfigError(BiasUnlearnError):
    """A configuration value, flag or YAML key is invalid."""


class LeakageError(DataError):
    """Held-out sentences occur in the training split."""
