"""``edge-gateway command sign|send``: signed commands for gateways (``tools.operator_cmd`` has both)."""

from tools.operator_cmd import register_command as register

__all__ = ["register"]
