"""User-facing error types.

Every error a user can fix (a bad config key, an impossible plan, missing data files, a world size that does
not match the config) is raised as a :class:`HdblError` subclass. The CLI prints such errors as one paragraph
without a traceback and exits with code 2, so a message must say what was wrong *and* what to do about it.
Anything else is a bug or an environment failure and is reported with its traceback.
"""

from __future__ import annotations


class HdblError(Exception):
    """An error the user can fix; the message says how."""

    exit_code: int = 2


class ConfigError(HdblError):
    """A configuration value is missing, of the wrong type, or inconsistent with another."""


class PlanError(HdblError):
    """The dual-batch plan (method §4) cannot be satisfied with the given numbers."""


class DataError(HdblError):
    """A data set could not be found or read."""


class WorldSizeError(HdblError):
    """The MPI world size does not fit the configured server and worker groups."""


class SetupError(HdblError):
    """Set-up failed and every rank of the job knows it (the ranks agreed on it), so each can exit cleanly.

    Any other error in an MPI job is known to one rank only and must abort the whole job instead."""


class ResourceError(HdblError):
    """The device ran out of memory at the batch size and resolution asked for."""


class AlreadyFinished(HdblError):
    """`--resume auto` found a run that already finished: nothing to do, which is success (a requeued batch job
    that finds its run done must not fail)."""

    exit_code = 0
