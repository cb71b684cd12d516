"""How a command that ran to its end concluded: the one protocol its results share.

A command that cannot do its work raises (``kbguard.errors``); one that did it returns a result
whose ``verdict`` says how it ended. The CLI turns either into the exit code, in one place
(``kbguard.cli.common.exit_code_for``), and reads nothing else of the result to do so.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Protocol


class Verdict(IntEnum):
    """What a command concluded. The values are the documented exit codes (and verify's is the
    value of the ``kbguard_verify_exit_code`` metric), so scripts and dashboards read the same
    number."""

    HEALTHY = 0           # done, and nothing is wrong
    FINDINGS = 1          # a check found damage, or a drill failed or missed its objective
    COULD_NOT_CHECK = 2   # a part could not be checked (or a drill run stopped at its ceiling)
    INCOMPLETE = 4        # done, but a space is incomplete: its providers were down


class Outcome(Protocol):
    """A result that says how its command ended (``RebuildReport``, ``VerifyReport``,
    ``RepairReport``, ``SnapshotCheck``, ``DrillReport``)."""

    @property
    def verdict(self) -> Verdict: ...
