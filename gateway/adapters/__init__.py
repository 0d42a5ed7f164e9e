"""IO adapters of the agent: the durable queue (SQLite), key files, the boot epoch file and the uplinks.

Each adapter turns one outside thing into the core's values and typed errors. Adapters import the core, never
the application.
"""
