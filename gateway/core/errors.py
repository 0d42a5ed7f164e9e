"""One exception type per failure domain (house style, habit 6).

Each error carries the data a caller needs to decide what to do (retry, drop, count) and a message a person can act
on. Third-party errors are converted at the adapter with ``raise ... from exc``.
"""


class GatewayError(Exception):
    """Base of every error the agent raises on purpose."""


class DecodeError(GatewayError, ValueError):
    """Bytes from a radio, a wire or a file did not decode.

    ``reason`` is a short stable token used as a counter name (for example ``"bad_checksum"``); the message says
    what was wrong in words.
    """

    def __init__(self, message, reason="malformed"):
        super().__init__(message)
        self.reason = reason


class ConfigError(GatewayError):
    """Configuration is invalid. Names the file and the key, so the installer can fix it."""

    def __init__(self, message, file=None, key=None):
        where = ""
        if file and key:
            where = "%s: %s: " % (file, key)
        elif file:
            where = "%s: " % (file,)
        elif key:
            where = "%s: " % (key,)
        super().__init__(where + message)
        self.file = file
        self.key = key
        self.detail = message


class KeyFileError(GatewayError):
    """A key file is missing, unreadable, malformed or too open. Never carries key material."""


class StoreError(GatewayError):
    """The durable queue failed. ``kind`` is one of ``corrupt``, ``full``, ``readonly``, ``io``."""

    def __init__(self, message, kind="io"):
        super().__init__(message)
        self.kind = kind


class UplinkError(GatewayError):
    """Delivery failed.

    ``retryable`` says whether the same bytes may succeed later (network down, 5xx, 429). A non-retryable error
    (4xx rejection) means the batch is quarantined, never retried forever. ``retry_after`` is the peer's hint in
    seconds, or None.
    """

    def __init__(self, message, retryable=True, retry_after=None, status=None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


class VerifyError(GatewayError):
    """A batch failed verification. ``reason`` is a stable token (``bad_signature``, ``unknown_kid``, ...)."""

    def __init__(self, message, reason="malformed"):
        super().__init__(message)
        self.reason = reason
