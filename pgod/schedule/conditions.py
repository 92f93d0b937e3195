"""Whether the machine is fit for a build now: on AC power, and idle.

A build is a full compile (minutes to hours) and its benchmark gate wants a quiet machine, so a
due build waits, by default, for both (Android's ART compiles from profiles only when the device
is idle and charging):

- **Power**: UPower's `OnBattery` on the system bus, read at each check (one property Get).
  No UPower (a server, a container, the CI host) counts as AC, and status says so.
- **Idle**: the machine's CPU use over the last `build_idle_seconds`, from /proc/stat (every
  CPU's busy time over all of it), below `build_idle_cpu_percent`. Chosen over logind's
  IdleHint, which only desktop sessions set (a server or an SSH session never goes "idle", so
  its builds would never run), and over the load average, which counts tasks waiting on I/O
  and says nothing of how many cores are free. pgod's own merges count as use: they are short.

Once started, a build keeps going when the power goes or the user comes back: it runs at the
lowest CPU and I/O priority (optimize/priority.py), so it takes only what nobody else wants, and
stopping it would throw away the compile done so far. `pgoctl rebuild` ignores the conditions.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from pgod.config import Config

log = structlog.get_logger(__name__)

CHECK_SECONDS = 5.0  # how often a waiting build looks again (a /proc/stat read, a property Get)
UPOWER_TIMEOUT_MS = 1000


def read_cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat's first line; None where
    /proc/stat cannot be read (a unit with ProcSubset=pid hides it)."""
    try:
        with open("/proc/stat", "rb") as stat:
            fields = [int(x) for x in stat.readline().split()[1:9]]  # user .. steal (guest is in user)
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle, iowait
    total = sum(fields)
    return total - idle, total


def upower_on_battery() -> bool | None:
    """UPower's OnBattery; None when there is no UPower (or no system bus) to ask."""
    from gi.repository import Gio, GLib  # the D-Bus stack pydbus is built on

    try:
        bus = Gio.bus_get_sync(Gio.BusType.SYSTEM, None)
        reply = bus.call_sync(
            "org.freedesktop.UPower", "/org/freedesktop/UPower", "org.freedesktop.DBus.Properties", "Get",
            GLib.Variant("(ss)", ("org.freedesktop.UPower", "OnBattery")), GLib.VariantType("(v)"),
            Gio.DBusCallFlags.NONE, UPOWER_TIMEOUT_MS, None)
    except GLib.Error:
        return None
    return bool(reply.unpack()[0])


@dataclass(frozen=True)
class Reading:
    """What the last check saw, for status."""

    waiting: str | None  # why a due build waits ("on battery", "busy, 73 % CPU"); None: fit
    on_battery: bool | None  # None: no UPower
    cpu_percent: float | None  # over the window; None: not measured for long enough yet
    at: float  # wall-clock time of the check

    def document(self) -> dict:
        return {"waiting": self.waiting, "on_battery": self.on_battery,
                "cpu_percent": None if self.cpu_percent is None else round(self.cpu_percent, 1), "at": self.at}


class Conditions:
    """Checks power and CPU use when asked (engine thread); see the module docstring."""

    def __init__(self, config: Config, cpu_times: Callable[[], tuple[int, int] | None] = read_cpu_times,
                 on_battery: Callable[[], bool | None] = upower_on_battery,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._cpu_times = cpu_times
        self._on_battery = on_battery
        self._samples: deque[tuple[float, int, int]] = deque()  # (monotonic, busy, total)
        self._cpu_unknown = False  # /proc/stat could not be read: the idle condition is off
        self.last: Reading | None = None
        self._next_check = 0.0

    def check(self) -> Reading:
        """Look now: may a due build start?"""
        now = self._clock()
        self._next_check = now + CHECK_SECONDS
        on_battery = self._on_battery()
        cpu = self._cpu_percent(now)
        waiting = None
        if on_battery and not self.config.build_on_battery:
            waiting = "on battery"
        elif self.config.build_idle_cpu_percent < 100 and not self._cpu_unknown:
            if cpu is None:
                waiting = f"measuring CPU use ({self.config.build_idle_seconds:g} s)"
            elif cpu >= self.config.build_idle_cpu_percent:
                waiting = f"busy, {cpu:.0f} % CPU"
        reading = Reading(waiting, on_battery, cpu, time.time())
        if self.last is None or _kind(self.last.waiting) != _kind(waiting):  # not every figure: "busy" once
            log.info("build.conditions", waiting=waiting, on_battery=on_battery,
                     cpu_percent=None if cpu is None else round(cpu, 1))
        self.last = reading
        return reading

    def next_check(self) -> float:
        """Monotonic time a waiting build should look again."""
        return self._next_check

    def _cpu_percent(self, now: float) -> float | None:
        """CPU use over the last window: the newest sample against the newest one at least a
        window old (None until there is one). Samples are taken at each check, CHECK_SECONDS
        apart while a build waits; older ones than needed are dropped."""
        if self.config.build_idle_cpu_percent >= 100 or self._cpu_unknown:
            return None
        times = self._cpu_times()
        if times is None:  # never blocks the builds: they run as if idle, and the journal says why
            self._cpu_unknown = True
            log.warning("build.cpu_unknown", hint="/proc/stat cannot be read (ProcSubset=pid?): builds do not wait"
                        " for an idle CPU")
            return None
        busy, total = times
        window = self.config.build_idle_seconds
        if self._samples and now - self._samples[-1][0] > window + 2 * CHECK_SECONDS:
            self._samples.clear()  # a gap (no build waited): measure afresh, never an old average
        self._samples.append((now, busy, total))
        while len(self._samples) >= 2 and now - self._samples[1][0] >= window:
            self._samples.popleft()
        first_at, first_busy, first_total = self._samples[0]
        if now - first_at < window or total <= first_total:
            return None
        return 100.0 * (busy - first_busy) / (total - first_total)


def _kind(waiting: str | None) -> str | None:
    return None if waiting is None else waiting.split(",")[0]
