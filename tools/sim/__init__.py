"""Host-side simulators: the pty harness that runs ``firmware_sim`` nodes under MicroPython, the simulated BLE
radio, and the mocked BlueZ on a private D-Bus. They drive the real agent; they are not firmware.
"""
