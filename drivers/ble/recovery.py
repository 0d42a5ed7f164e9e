"""When to power-cycle a BLE adapter, and when to give up and say it needs a reset. Pure: no bleak, no D-Bus.

The scanner (``drivers/ble/adapter.py``) ends a scan session when no advertisement arrived for ``watchdog_s`` or
when BlueZ raised. Each such end is ``failed()``: the policy answers ``"power_cycle"`` (turn the adapter off and on
through BlueZ, then scan again) while fewer than ``max_power_cycles`` cycles were tried since adverts last
flowed, and ``"restart"`` (scan again only) after that, in the state ``needs_reset``: the adapter is wedged past
what software can do (unplug the dongle, reboot). The first advertisement after any of this is ``adverts()``:
the count starts again and the state is back to ``scanning``. The backoff between attempts is the scanner's.

States (``ADAPTER_STATES``, also the ``state`` label of the metric ``edge_gateway_ble_adapter_state``):
``starting`` (no scan yet), ``scanning``, ``silent`` (the session ended, a plain restart is next),
``power_cycling``, ``needs_reset``.
"""

ADAPTER_STATES = ("starting", "scanning", "silent", "power_cycling", "needs_reset")


class AdapterRecovery:
    def __init__(self, power_cycle=True, max_power_cycles=3):
        self.power_cycle = power_cycle
        self.max_power_cycles = max_power_cycles
        self.state = "starting"
        self.cycles = 0  # power cycles tried since adverts last flowed
        self.gave_up = False  # needs_reset was reported for this episode

    def scanning(self):
        """A scan session started."""
        if self.state != "needs_reset":
            self.state = "scanning"

    @property
    def recovering(self):
        """Power cycles were tried (or given up on) since adverts last flowed."""
        return self.cycles > 0 or self.state == "needs_reset"

    def adverts(self):
        """An advertisement arrived: whatever was wrong is over. True when that ends a recovery episode."""
        episode = self.recovering
        self.cycles = 0
        self.gave_up = False
        self.state = "scanning"
        return episode

    def failed(self):
        """A session ended unhealthy: ``"power_cycle"`` or ``"restart"`` is next."""
        if self.power_cycle and self.cycles < self.max_power_cycles:
            self.cycles += 1
            self.state = "power_cycling"
            return "power_cycle"
        if self.power_cycle:
            self.state = "needs_reset"
        else:
            self.state = "silent"
        return "restart"

    def needs_reset_now(self):
        """True once per episode, when the state first became ``needs_reset`` (the caller reports it)."""
        if self.state == "needs_reset" and not self.gave_up:
            self.gave_up = True
            return True
        return False
