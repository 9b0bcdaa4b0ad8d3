"""Business logic on top of sessions; routes stay thin and map these errors to HTTP."""


class NotFound(LookupError):
    """The named run, worker or command does not exist (404)."""


class Conflict(RuntimeError):
    """The request is valid but the run is not in a state that allows it (409)."""


class Retired(RuntimeError):
    """The worker was asked to stop, or reached its cap of runs: it takes no more (410)."""
