"""The agent application: the asyncio shell that moves batches between the pipeline, the store and the uplink
(``agent``), its wiring and lifecycle (``service``), typed configuration, doctor and the technician console.

It imports the core, the adapters and the sensor drivers (``drivers/``); nothing imports it but the CLI and tools.
"""
