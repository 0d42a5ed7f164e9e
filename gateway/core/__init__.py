"""The pure core: values in, values out. No IO, no asyncio, no threads, no clock reads (tests/integration/test_purity.py).

Value types and errors, SenML and the COSE wire codec (sign and verify), the strict CBOR walk, the batcher, the
rules engine (which also runs under MicroPython), presence, redaction and the poison-batch rule. Everything else
in the project may import from here; this package imports nothing of the project outside itself.
"""
