"""A mocked BlueZ on a private system D-Bus, for running bleak's real BlueZ backend without a radio.

The kernel of the test machines has no Bluetooth stack, so the gateway's BLE adapter is tested end to end against
python-dbusmock's ``bluez5`` template (docs/architecture.md, "BLE without hardware"). This harness:

* starts a private system bus (``dbusmock.testcase.PrivateDBus``; it sets ``DBUS_SYSTEM_BUS_ADDRESS``, which
  bleak's ``MessageBus(bus_type=SYSTEM)`` reads at connect time, and ``stop`` restores the previous value);
* spawns the ``bluez5`` template (its method log goes to a file, never to an unread pipe) and adds ``hci0``;
* creates device objects itself with ``AddObject`` and the D-Bus types BlueZ uses (``ManufacturerData`` a{qv} and
  ``ServiceData`` a{sv} of byte arrays, ``RSSI`` n, ``Name`` s ...), because the template's ``AddDevice`` gets
  them wrong, then emits ``InterfacesAdded``; every ``advertise`` is a ``PropertiesChanged``, which bleak reports
  as a new advertisement (``DuplicateData`` is off);
* adds GATT service/characteristic/descriptor objects (``ReadValue``/``StartNotify``/``StopNotify``); ``Connect``
  sets ``Connected`` and then ``ServicesResolved``; ``Disconnect`` clears both;
* breaks the adapter on purpose: ``remove_adapter`` (the adapter and its devices vanish, as when a USB dongle is
  pulled) and ``restore_adapter``; ``fail_scans`` makes ``StartDiscovery`` and ``RegisterMonitor`` fail;
  ``wedge`` makes it stop delivering adverts (``advertise`` is dropped, as by a firmware that hangs) until it is
  power-cycled (``Powered`` set false, then true, over D-Bus); ``fail_power`` makes setting ``Powered`` fail
  (``org.bluez.Error.Failed``); ``power_log`` lists the ``Powered`` values clients set.

Usage (the calls are blocking D-Bus calls of a few milliseconds; calling them from a coroutine is fine)::

    with BluezMock() as bt:                       # private bus + bluez5 + hci0
        bt.add_device("A4:C1:38:00:00:01", service_data={0xFCD2: adv_bytes}, rssi=-60)
        bt.advertise("A4:C1:38:00:00:01", service_data={0xFCD2: next_bytes}, rssi=-58)
        bt.add_gatt_device("A4:C1:38:00:00:09", {0x2A6E: b"\\xca\\x09"})
        bt.set_characteristic("A4:C1:38:00:00:09", 0x2A6E, b"\\xcb\\x09")   # a notification
        bt.remove_adapter(); bt.restore_adapter()    # adapter gone and back (devices re-added, last advert)
        bt.wedge(); bt.fail_power()                   # adverts stop until a power cycle; the power cycle fails

Devices must advertise after the scanner started (bleak only reports signals it sees, not objects that exist).
Keys of ``service_data`` may be 16-bit ints or full UUID strings; keys of ``manufacturer_data`` are company ids.
"""

import os
import subprocess
import tempfile

import dbus
from dbusmock.testcase import BusType, PrivateDBus, SpawnedMock

BUS_NAME = "org.bluez"
MOCK_IFACE = "org.bluez.Mock"
DBUSMOCK_IFACE = "org.freedesktop.DBus.Mock"
OBJECT_MANAGER_IFACE = "org.freedesktop.DBus.ObjectManager"
ADAPTER_IFACE = "org.bluez.Adapter1"
MONITOR_MANAGER_IFACE = "org.bluez.AdvertisementMonitorManager1"
DEVICE_IFACE = "org.bluez.Device1"
SERVICE_IFACE = "org.bluez.GattService1"
CHAR_IFACE = "org.bluez.GattCharacteristic1"
DESC_IFACE = "org.bluez.GattDescriptor1"

BASE_UUID = "0000%04x-0000-1000-8000-00805f9b34fb"
ESS_SERVICE = 0x181A
CCCD = 0x2902

# method bodies run inside the mock process (dbusmock exec()s them with `self`, `args` and `dbus` in scope)
_CONNECT = ("self.UpdateProperties('org.bluez.Device1', {'Connected': dbus.Boolean(True)})\n"
            "self.UpdateProperties('org.bluez.Device1', {'ServicesResolved': dbus.Boolean(True)})\n")
_CONNECT_FAILS = "raise dbus.exceptions.DBusException('Page Timeout', name='org.bluez.Error.Failed')"
_DISCONNECT = ("self.UpdateProperties('org.bluez.Device1', {'ServicesResolved': dbus.Boolean(False), "
               "'Connected': dbus.Boolean(False)})\n")
_READ_VALUE = "ret = self.props['org.bluez.GattCharacteristic1']['Value']"
_READ_DESC = "ret = self.props['org.bluez.GattDescriptor1']['Value']"
_START_NOTIFY = "self.UpdateProperties('org.bluez.GattCharacteristic1', {'Notifying': dbus.Boolean(True)})"
_STOP_NOTIFY = "self.UpdateProperties('org.bluez.GattCharacteristic1', {'Notifying': dbus.Boolean(False)})"
_SCAN_FAILS = "raise dbus.exceptions.DBusException('adapter failed (mock)', name='org.bluez.Error.Failed')"
_START_DISCOVERY = "self.UpdateProperties('org.bluez.Adapter1', {'Discovering': dbus.Boolean(True)})"
_STOP_DISCOVERY = "self.UpdateProperties('org.bluez.Adapter1', {'Discovering': dbus.Boolean(False)})"
MOCK_ADAPTER_IFACE = "org.bluez.Mock.Adapter"  # the harness's own questions to the adapter object
# Properties.Set on the adapter, as bluetoothd does it, plus the harness's switches: a wedged adapter is unwedged
# by turning it on again; with ``power_fails`` setting Powered raises.
_ADAPTER_SET = (
    "if args[0] == 'org.bluez.Adapter1' and args[1] == 'Powered':\n"
    "    self.power_log = getattr(self, 'power_log', []) + [bool(args[2])]\n"
    "    if getattr(self, 'power_fails', False):\n"
    "        raise dbus.exceptions.DBusException('Failed (mock)', name='org.bluez.Error.Failed')\n"
    "    if args[2]:\n"
    "        self.wedged = False\n"
    "    else:\n"
    "        self.UpdateProperties('org.bluez.Adapter1', {'Discovering': dbus.Boolean(False)})\n"
    "self.UpdateProperties(args[0], {args[1]: args[2]})\n")


def uuid_text(uuid):
    """16-bit int or UUID text -> the lower-case 128-bit text BlueZ uses."""
    if isinstance(uuid, int):
        return BASE_UUID % uuid
    return str(uuid).lower()


def _bytes(data):
    return dbus.Array([dbus.Byte(b) for b in bytes(data)], signature="y")


def _service_data(service_data):
    return dbus.Dictionary({uuid_text(k): _bytes(v) for k, v in (service_data or {}).items()}, signature="sv")


def _manufacturer_data(manufacturer_data):
    return dbus.Dictionary({dbus.UInt16(k): _bytes(v) for k, v in (manufacturer_data or {}).items()},
                           signature="qv")


def device_path(adapter, mac):
    return "/org/bluez/%s/dev_%s" % (adapter, mac.upper().replace(":", "_"))


class BluezMock:
    """A private system bus with a mocked bluetoothd. ``start``/``stop`` or use it as a context manager."""

    def __init__(self, adapter="hci0", monitor_api=True):
        self.adapter = adapter
        self.monitor_api = monitor_api
        self.bus = None
        self._dbus = None
        self._mock = None
        self._log = None
        self._saved_env = None
        self._devices = {}  # MAC -> dict(kind, kwargs, last advert) so restore_adapter can bring them back
        self._switches = False  # the adapter's Set override and Mock.Adapter methods are installed
        self._wedged = False

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self):
        env, self._saved_env = BusType.SYSTEM.environ
        self._dbus = PrivateDBus(BusType.SYSTEM)
        self._dbus.start()
        self._log = tempfile.NamedTemporaryFile(prefix="bluez-mock-", suffix=".log", delete=False)
        try:
            self._mock = SpawnedMock.spawn_with_template(
                "bluez5", {"enable_monitor_api": dbus.Boolean(self.monitor_api)}, BusType.SYSTEM,
                stdout=self._log, stderr=subprocess.STDOUT)
            self.bus = BusType.SYSTEM.get_connection()
            self.add_adapter()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        if self._mock is not None:
            self._mock.terminate()
            self._mock = None
        if self.bus is not None:
            self.bus.close()
            self.bus = None
        if self._dbus is not None:
            self._dbus.stop()
            self._dbus = None
        if self._log is not None:
            self._log.close()
            os.unlink(self._log.name)
            self._log = None
        env, _ = BusType.SYSTEM.environ
        if self._saved_env is None:
            os.environ.pop(env, None)
        else:
            os.environ[env] = self._saved_env

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def address(self):
        """The private bus address (what ``DBUS_SYSTEM_BUS_ADDRESS`` is set to)."""
        return self._dbus.address

    def log_text(self):
        """What the mock logged (every method call on it), for test failure messages."""
        with open(self._log.name, "rb") as f:
            return f.read().decode("utf-8", "replace")

    # -- D-Bus plumbing ---------------------------------------------------------------------------------------
    def _obj(self, path, iface=DBUSMOCK_IFACE):
        return dbus.Interface(self.bus.get_object(BUS_NAME, path), iface)

    @property
    def _root(self):
        return self._obj("/")

    def _adapter_path(self):
        return "/org/bluez/" + self.adapter

    def _emit_added(self, path, interfaces):
        self._root.EmitSignal(OBJECT_MANAGER_IFACE, "InterfacesAdded", "oa{sa{sv}}",
                              [dbus.ObjectPath(path), dbus.Dictionary(interfaces, signature="sa{sv}")])

    def _emit_removed(self, path, interfaces):
        self._root.EmitSignal(OBJECT_MANAGER_IFACE, "InterfacesRemoved", "oas",
                              [dbus.ObjectPath(path), dbus.Array(interfaces, signature="s")])

    def calls(self, path, method):
        """The mock's record of calls of ``method`` on the object at ``path``: list of argument lists."""
        return [list(args) for _, args in self._obj(path).GetMethodCalls(method)]

    # -- adapter ----------------------------------------------------------------------------------------------
    def add_adapter(self):
        dbus.Interface(self.bus.get_object(BUS_NAME, "/"), MOCK_IFACE).AddAdapter(self.adapter, "edge-gw-test")
        self._switches = self._wedged = False  # a new adapter object: a working one

    def remove_adapter(self):
        """The adapter disappears with all its devices (what bluetoothd reports when a dongle is pulled)."""
        dbus.Interface(self.bus.get_object(BUS_NAME, "/"), MOCK_IFACE).RemoveAdapterWithDevices(self.adapter)

    def restore_adapter(self):
        """The adapter comes back; known devices are re-added with their last advert (a new advertisement)."""
        self.add_adapter()
        devices, self._devices = self._devices, {}
        for mac, spec in devices.items():
            if spec["kind"] == "gatt":
                self.add_gatt_device(mac, **spec["kwargs"])
            else:
                self.add_device(mac, **spec["kwargs"])

    def fail_scans(self, failing=True):
        """Make StartDiscovery and RegisterMonitor raise org.bluez.Error.Failed (or work again)."""
        adapter = self._obj(self._adapter_path())
        adapter.AddMethod(ADAPTER_IFACE, "StartDiscovery", "", "", _SCAN_FAILS if failing else _START_DISCOVERY)
        adapter.AddMethod(ADAPTER_IFACE, "StopDiscovery", "", "", "" if failing else _STOP_DISCOVERY)
        if self.monitor_api:
            adapter.AddMethod(MONITOR_MANAGER_IFACE, "RegisterMonitor", "o", "", _SCAN_FAILS if failing else "")
            adapter.AddMethod(MONITOR_MANAGER_IFACE, "UnregisterMonitor", "o", "", "")

    def _adapter_switches(self):
        adapter = self._obj(self._adapter_path())
        if not self._switches:
            adapter.AddMethod(dbus.PROPERTIES_IFACE, "Set", "ssv", "", _ADAPTER_SET)
            adapter.AddMethod(MOCK_ADAPTER_IFACE, "Wedged", "", "b", "ret = getattr(self, 'wedged', False)")
            adapter.AddMethod(MOCK_ADAPTER_IFACE, "PowerLog", "", "ab", "ret = getattr(self, 'power_log', [])")
            adapter.AddMethod(MOCK_ADAPTER_IFACE, "SetSwitch", "sb", "", "setattr(self, args[0], bool(args[1]))")
            self._switches = True
        return dbus.Interface(adapter, MOCK_ADAPTER_IFACE)

    def wedge(self):
        """The adapter stops delivering adverts (``advertise`` calls are dropped) until a client turns it off and
        on again through ``org.bluez.Adapter1.Powered``."""
        self._adapter_switches().SetSwitch("wedged", True)
        self._wedged = True

    def wedged(self):
        """True while the adapter drops adverts (asks the mock: a power cycle unwedges it)."""
        if self._wedged:
            self._wedged = bool(self._adapter_switches().Wedged())
        return self._wedged

    def fail_power(self, failing=True):
        """Make setting ``Powered`` raise ``org.bluez.Error.Failed`` (or work again)."""
        self._adapter_switches().SetSwitch("power_fails", failing)

    def power_log(self):
        """The ``Powered`` values clients tried to set, in order (failed attempts included)."""
        return [bool(v) for v in self._adapter_switches().PowerLog()] if self._switches else []

    def discovering(self):
        props = dbus.Interface(self.bus.get_object(BUS_NAME, self._adapter_path()), dbus.PROPERTIES_IFACE)
        return bool(props.Get(ADAPTER_IFACE, "Discovering"))

    # -- advertising devices ----------------------------------------------------------------------------------
    def _device_props(self, mac, name, rssi, service_data, manufacturer_data, connectable_uuids=()):
        props = {
            "Address": dbus.String(mac.upper()),
            "AddressType": dbus.String("public"),
            "Alias": dbus.String(name or mac.upper().replace(":", "-")),
            "Adapter": dbus.ObjectPath(self._adapter_path()),
            "Paired": dbus.Boolean(False),
            "Bonded": dbus.Boolean(False),
            "Trusted": dbus.Boolean(False),
            "Blocked": dbus.Boolean(False),
            "Connected": dbus.Boolean(False),
            "ServicesResolved": dbus.Boolean(False),
            "LegacyPairing": dbus.Boolean(False),
            "UUIDs": dbus.Array([uuid_text(u) for u in connectable_uuids], signature="s"),
            "RSSI": dbus.Int16(rssi),
            "ServiceData": _service_data(service_data),
            "ManufacturerData": _manufacturer_data(manufacturer_data),
        }
        if name is not None:
            props["Name"] = dbus.String(name)
        return props

    def add_device(self, mac, service_data=None, manufacturer_data=None, rssi=-60, name=None, connectable=True):
        """A device appears with its first advertisement (``InterfacesAdded``). Returns its object path."""
        path = device_path(self.adapter, mac)
        props = self._device_props(mac, name, rssi, service_data, manufacturer_data)
        self._add_device_object(path, props, connectable)
        self._emit_added(path, {DEVICE_IFACE: props})
        self._devices[mac.upper()] = {"kind": "adv", "kwargs": dict(
            service_data=service_data, manufacturer_data=manufacturer_data, rssi=rssi, name=name,
            connectable=connectable)}
        return path

    def _add_device_object(self, path, props, connectable):
        methods = [("Connect", "", "", _CONNECT if connectable else _CONNECT_FAILS),
                   ("Disconnect", "", "", _DISCONNECT),
                   ("Pair", "", "", ""), ("CancelPairing", "", "", ""),
                   ("ConnectProfile", "s", "", ""), ("DisconnectProfile", "s", "", "")]
        self._root.AddObject(path, DEVICE_IFACE, dbus.Dictionary(props, signature="sv"), methods)

    def add_devices(self, macs, make_advert, rssi=-60):
        """Add many devices: ``make_advert(mac, index)`` returns ``dict(service_data=..., manufacturer_data=...)``."""
        return [self.add_device(mac, rssi=rssi, **make_advert(mac, i)) for i, mac in enumerate(macs)]

    def advertise(self, mac, service_data=None, manufacturer_data=None, rssi=None, name=None):
        """A new advertisement from a known device (one ``PropertiesChanged`` carrying what changed).

        Only the given fields change; BlueZ merges service data by UUID and manufacturer data by company id, and
        so does bleak, so pass the whole new value for each UUID/company id you advertise. A wedged adapter drops
        it (returns False).
        """
        if self.wedged():
            return False
        changed = {}
        if service_data is not None:
            changed["ServiceData"] = _service_data(service_data)
        if manufacturer_data is not None:
            changed["ManufacturerData"] = _manufacturer_data(manufacturer_data)
        if rssi is not None:
            changed["RSSI"] = dbus.Int16(rssi)
        if name is not None:
            changed["Name"] = dbus.String(name)
        self._obj(device_path(self.adapter, mac)).UpdateProperties(DEVICE_IFACE, dbus.Dictionary(changed,
                                                                                                   signature="sv"))
        spec = self._devices.get(mac.upper())
        if spec is not None:
            spec["kwargs"].update({k: v for k, v in (("service_data", service_data),
                                                     ("manufacturer_data", manufacturer_data),
                                                     ("rssi", rssi), ("name", name)) if v is not None})
        return True

    def remove_device(self, mac):
        path = device_path(self.adapter, mac)
        for child in [p for p in self._child_paths(path)]:
            self._root.RemoveObject(child)
        self._root.RemoveObject(path)
        self._emit_removed(path, [DEVICE_IFACE])
        self._devices.pop(mac.upper(), None)

    def _child_paths(self, path):
        spec = self._devices.get(path.rsplit("dev_", 1)[-1].replace("_", ":"))
        return spec.get("children", []) if spec else []

    # -- GATT -------------------------------------------------------------------------------------------------
    def add_gatt_device(self, mac, characteristics, rssi=-70, name=None, connectable=True, service=ESS_SERVICE):
        """A connectable device with one primary service (default Environmental Sensing 0x181A).

        ``characteristics`` maps a 16-bit UUID (e.g. 0x2A6E) to its initial value (bytes). Each characteristic
        has flags read+notify and a CCCD descriptor. The device also advertises the service UUID once.
        """
        path = device_path(self.adapter, mac)
        props = self._device_props(mac, name, rssi, None, None, connectable_uuids=(service,))
        self._add_device_object(path, props, connectable)
        children = []
        added = [(path, {DEVICE_IFACE: props})]
        svc_path = path + "/service000a"
        svc = {"UUID": dbus.String(uuid_text(service)), "Primary": dbus.Boolean(True),
               "Device": dbus.ObjectPath(path), "Includes": dbus.Array([], signature="o"),
               "Handle": dbus.UInt16(0x000a)}
        self._root.AddObject(svc_path, SERVICE_IFACE, dbus.Dictionary(svc, signature="sv"), [])
        children.append(svc_path)
        added.append((svc_path, {SERVICE_IFACE: svc}))
        handle = 0x000b
        for uuid16, value in characteristics.items():
            char_path = "%s/char%04x" % (svc_path, handle)
            char = {"UUID": dbus.String(uuid_text(uuid16)), "Service": dbus.ObjectPath(svc_path),
                    "Value": _bytes(value), "Notifying": dbus.Boolean(False),
                    "Flags": dbus.Array(["read", "notify"], signature="s"), "Handle": dbus.UInt16(handle),
                    "MTU": dbus.UInt16(247)}
            self._root.AddObject(char_path, CHAR_IFACE, dbus.Dictionary(char, signature="sv"), [
                ("ReadValue", "a{sv}", "ay", _READ_VALUE),
                ("WriteValue", "aya{sv}", "", ""),
                ("StartNotify", "", "", _START_NOTIFY),
                ("StopNotify", "", "", _STOP_NOTIFY)])
            desc_path = "%s/desc%04x" % (char_path, handle + 2)
            desc = {"UUID": dbus.String(uuid_text(CCCD)), "Characteristic": dbus.ObjectPath(char_path),
                    "Value": _bytes(b"\x00\x00"), "Flags": dbus.Array(["read", "write"], signature="s"),
                    "Handle": dbus.UInt16(handle + 2)}
            self._root.AddObject(desc_path, DESC_IFACE, dbus.Dictionary(desc, signature="sv"), [
                ("ReadValue", "a{sv}", "ay", _READ_DESC), ("WriteValue", "aya{sv}", "", "")])
            children += [char_path, desc_path]
            added += [(char_path, {CHAR_IFACE: char}), (desc_path, {DESC_IFACE: desc})]
            handle += 3
        for obj_path, interfaces in added:
            self._emit_added(obj_path, interfaces)
        self._devices[mac.upper()] = {"kind": "gatt", "children": children[::-1], "kwargs": dict(
            characteristics=dict(characteristics), rssi=rssi, name=name, connectable=connectable,
            service=service)}
        return path

    def _char_path(self, mac, uuid16):
        spec = self._devices[mac.upper()]
        index = list(spec["kwargs"]["characteristics"]).index(uuid16)
        return "%s/service000a/char%04x" % (device_path(self.adapter, mac), 0x000b + 3 * index)

    def set_characteristic(self, mac, uuid16, value):
        """Change a characteristic's value; a client that called StartNotify gets it as a notification."""
        self._obj(self._char_path(mac, uuid16)).UpdateProperties(
            CHAR_IFACE, dbus.Dictionary({"Value": _bytes(value)}, signature="sv"))
        self._devices[mac.upper()]["kwargs"]["characteristics"][uuid16] = bytes(value)

    def connected(self, mac):
        props = dbus.Interface(self.bus.get_object(BUS_NAME, device_path(self.adapter, mac)),
                               dbus.PROPERTIES_IFACE)
        return bool(props.Get(DEVICE_IFACE, "Connected"))

    def read_count(self, mac, uuid16):
        """How many times a client read this characteristic (ReadValue calls logged by the mock)."""
        return len(self.calls(self._char_path(mac, uuid16), "ReadValue"))
