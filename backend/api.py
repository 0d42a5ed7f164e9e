"""The receiver's HTTP API as constants: where batches go, the media types and codings they may come in.

Shared by the verify-and-store core (``backend.receiver``) and its HTTP front (``backend.httpd``).
"""

from gateway.core.wire import HTTP_CONTENT_TYPE

#: the body's media type: the one the HTTP uplink sends (``gateway.core.wire.HTTP_CONTENT_TYPE``), without parameters;
#: plain CBOR and octet-stream are accepted too (curl, older gateways).
MEDIA_TYPE = HTTP_CONTENT_TYPE.split(";")[0].strip()
ACCEPTED_TYPES = (MEDIA_TYPE, "application/cbor", "application/octet-stream")
#: content codings a body may come in (HTTP ``Content-Encoding``, the MQTT v5 user property ``content-encoding``)
IDENTITY, DEFLATE = "identity", "deflate"
CODINGS = (IDENTITY, DEFLATE)
#: the most digits a ``Content-Length`` may have (the batch limit has 7)
MAX_LENGTH_DIGITS = 10
#: where batches are accepted (``ReceiverServer.url``); every other path is 404
BATCH_PATH = "/v1/batches"


def is_batch_path(target):
    """The request target names the batch endpoint (a trailing slash and a query string are ignored)."""
    return target.split("?", 1)[0].rstrip("/") == BATCH_PATH

#: where signed commands are queued for a gateway (``POST``, one command per request)
COMMANDS_PATH = "/v1/commands"


def is_commands_path(target):
    return target.split("?", 1)[0].rstrip("/") == COMMANDS_PATH
