"""The kit's one exception: an expectation of the test that the server did not meet."""


class HeartbeatTestError(AssertionError):
    """A kit helper's expectation failed (or the helper was misused); fails the test."""
