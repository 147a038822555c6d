"""One exception hierarchy; each class carries the exit code the CLI returns for it."""

# Exit codes are a public contract: they are listed in `drtool --help` and docs/exit-codes.md.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_VERIFY = 3
EXIT_BUSY = 4

EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_FAILED: "the operation failed (a host, service or step did not do what was asked)",
    EXIT_USAGE: "usage or configuration error (nothing was changed)",
    EXIT_VERIFY: "verification failed (integrity, host key, registry mismatch)",
    EXIT_BUSY: "busy: another run holds the lock or lease",
}


class DrtoolError(Exception):
    """Base error: a message naming what is wrong and a hint saying what to do."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: str | None = None, details: list[str] | None = None,
                 result: dict | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = list(details or [])
        self.result = result   # what was done before the failure, when it matters (e.g. a fleet's table)

    def to_dict(self) -> dict:
        doc = {
            "error": type(self).__name__,
            "message": self.message,
            "hint": self.hint,
            "details": self.details,
            "exit_code": self.exit_code,
        }
        if self.result is not None:
            doc["result"] = self.result
        return doc


class OperationFailed(DrtoolError):
    exit_code = EXIT_FAILED


class UsageError(DrtoolError):
    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """The configuration is invalid; `details` holds every problem found, each naming file and key."""


class VerificationError(DrtoolError):
    exit_code = EXIT_VERIFY


class BusyError(DrtoolError):
    exit_code = EXIT_BUSY


class LabError(OperationFailed):
    """The embedded lab could not be brought up, inspected or torn down."""


class AnsibleRunError(OperationFailed):
    """A playbook failed; carries the failing host, task and the module's message."""

    def __init__(self, message: str, hint: str | None = None, *, host: str | None = None,
                 task: str | None = None, output: str | None = None, details: list[str] | None = None):
        super().__init__(message, hint, details)
        self.host = host
        self.task = task
        self.output = output

    def to_dict(self) -> dict:
        d = super().to_dict()
        d.update(host=self.host, task=self.task)
        return d


class HostKeyError(VerificationError):
    """An SSH host key did not match the pinned known_hosts entry."""
