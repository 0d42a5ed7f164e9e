"""Power-cycle a BLE adapter through BlueZ: ``org.bluez.Adapter1.Powered`` false, then true, over the system D-Bus.

It speaks D-Bus with ``dbus-fast``, the library bleak's BlueZ backend already uses (no new dependency), one
private connection per cycle: a wedged or restarted bluetoothd never leaves a half-broken shared connection
behind. Bounded by ``timeout_s`` as a whole. Needs what bleak needs (the ``bluetooth`` group or root; the systemd
unit's D-Bus access, deploy/systemd).
"""

import asyncio

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from gateway.core.errors import GatewayError

BLUEZ = "org.bluez"
ADAPTER_IFACE = "org.bluez.Adapter1"
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"


class PowerCycleError(GatewayError):
    """The adapter could not be turned off and on again; ``reason`` is a BlueZ error name or a short token."""

    def __init__(self, message, reason="failed"):
        super().__init__(message)
        self.reason = reason


async def _call(bus, path, member, signature, body):
    reply = await bus.call(Message(destination=BLUEZ, path=path, interface=PROPERTIES_IFACE, member=member,
                                   signature=signature, body=body))
    if reply.message_type == MessageType.ERROR:
        detail = reply.body[0] if reply.body else ""
        raise PowerCycleError("%s %s: %s %s" % (member, path, reply.error_name, detail), reply.error_name)
    return reply.body


async def power_cycle(adapter, timeout_s=10.0, off_s=0.5):
    """Turn ``adapter`` (``hci0``) off, wait ``off_s``, turn it on and check that it says so. Raises
    ``PowerCycleError``."""
    path = "/org/bluez/" + adapter
    bus = None
    try:
        async with asyncio.timeout(timeout_s):
            bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
            await _call(bus, path, "Set", "ssv", [ADAPTER_IFACE, "Powered", Variant("b", False)])
            await asyncio.sleep(off_s)
            await _call(bus, path, "Set", "ssv", [ADAPTER_IFACE, "Powered", Variant("b", True)])
            (powered,) = await _call(bus, path, "Get", "ss", [ADAPTER_IFACE, "Powered"])
    except TimeoutError:
        raise PowerCycleError("no answer from BlueZ within %.1f s" % timeout_s, "timeout") from None
    except (OSError, EOFError) as exc:
        raise PowerCycleError("system D-Bus: %s" % (exc or type(exc).__name__), "bus") from exc
    finally:
        if bus is not None:
            bus.disconnect()
    if not powered.value:
        raise PowerCycleError("%s stayed off after Powered=true" % adapter, "stayed_off")
