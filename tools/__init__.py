"""Tooling that never runs on a gateway: the demo, the field scenarios, the benchmark suite, provisioning and the
offline wheelhouse, the fuzzer, and the host-side simulators (``tools.sim``). Not in the gateway's wheel.
"""
