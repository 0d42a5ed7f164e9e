"""The backend side: the reference receiver (HTTP) and its storage. It does not run on a gateway and does not ship
in the gateway's wheel; it uses the core's verify library (``gateway.core.wire.verify``) and trust store.
"""
