"""Edge gateway agent: sensors in, signed SenML-CBOR batches out, nothing lost in between."""

__version__ = "0.1.0"
