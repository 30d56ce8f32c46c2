"""The error types every layer raises; each carries the documented process exit code.

Exit codes: 0 success, 1 operation failed, 2 bad input or usage, 3 refused by a lock, block or policy.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_REFUSED = 3


class ConveyorError(Exception):
    """A failure with one readable message for the user."""

    exit_code = EXIT_FAILED
    # The ledger's Release as recorded when the failure happened inside a release, else None: the CLI's
    # --json failure object shows it.
    release: object | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadInput(ConveyorError):
    """The user asked for something that cannot be done as asked (unknown env, bad ref, broken config)."""

    exit_code = EXIT_BAD_INPUT


class Refused(ConveyorError):
    """A lock, block or policy stops the operation; nothing was changed."""

    exit_code = EXIT_REFUSED


class OperationFailed(ConveyorError):
    """The operation ran and failed (build, task, health check, target)."""

    exit_code = EXIT_FAILED


class TargetError(OperationFailed):
    """A target could not do what it was asked; `logs` holds the last lines the workload printed."""

    def __init__(self, message: str, logs: list[str] | None = None) -> None:
        super().__init__(message)
        self.logs = logs or []


class InfrastructureMissing(BadInput):
    """A required tool or service (container engine, registry, proxy) is absent or unreachable."""


class ForgeError(OperationFailed):
    """The forge (GitHub) answered with an error, or could not be reached. The message names the call and
    GitHub's own reason in one line; it never holds a token."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ForgeUnavailable(ForgeError):
    """Down, slow, or rate limited past what conveyor waits for: worth retrying later (`retry_after`
    seconds, when the forge said)."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class ForgeRefused(ForgeError):
    """The forge refused for a reason a retry cannot fix (bad credentials, no permission, no such repo)."""


class PullRequestExists(ForgeRefused):
    """Opening a pull request that is already open for the same head and base (GitHub's 422)."""
