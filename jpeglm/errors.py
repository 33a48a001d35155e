"""The family of errors that mean "bad input or a broken file", not "a bug in jpeglm".

Every error a user can cause and fix (a bad config, a corrupt dataset, a checkpoint that is cut
short, a full disk, a folder another run holds) is a `UserError`: its message is one line saying
what went wrong, which file, and what to do. The `jpeglm` script (jpeglm/cli/__init__.py) prints
such an error as that one line and exits with status 2; anything else is a bug and keeps its
traceback. Each layer keeps its own subclass (ConfigError, ShardError, CheckpointError, ...).
"""

from __future__ import annotations

import errno

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Base of every error caused by input or environment, shown without a traceback."""


def disk_full_hint(e: OSError) -> str:
    """' (no space left on the device: free space and run again)' for ENOSPC/EDQUOT, else ''."""
    if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return " (no space left on the device: free some space and run the same command again)"
    return ""
