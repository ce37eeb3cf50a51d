"""A simulated fleet of SolarNode gateways: energy meters, PV inverters, weather stations and
ground-source heat pumps, producing SolarNetwork datums.

Pure: no Kafka, no clock, nothing read on import. The only file access is `load_tmy(path)`,
called explicitly by whoever wants real weather (pvlib's TMY3 files; `default_tmy_path()` finds
them without importing pvlib). Without a weather series the fleet uses `synthetic_weather()`, a
clear-sky, diurnal/seasonal model for the same site (Greensboro, NC).

Every value is a pure function of (spec, weather, tick): a fleet is a cursor over ticks
``start_ms + k * interval``; jumping backwards replays from `start_ms`, so the same seed gives
the same datums whatever order they are asked for in. Accumulating properties are the
trapezoid integral of their instantaneous counterpart, tick to tick. Model details and units
are in docs/simulate.md.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import random
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from processors.datum import Datum

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
YEAR_HOURS = 8760
DEFAULT_START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
TMY_FILES = ("723170TYA.CSV", "703165TY.csv")

# Out-of-range values injected by `bad_ratio`, per property: what a broken sensor sends.
# -999 is oTherm's own stand-in for a missing reading. Every one of them breaks the schema of
# its datastream in schemas/datamodels, so validation refuses it (tests/unit/test_demo_catalog).
FAULT_VALUES: Mapping[str, float] = {
    "watts": -1.0e7,
    "voltage": 9_999.0,
    "current": -500.0,
    "temperature": -999.0,
    "humidity": 180.0,
    "ghi": 4_000.0,
    "atm": 0.0,
    "heatpump_power": -999.0,
    "source_supplytemp": -999.0,
    "load_supplytemp": 250.0,
    "tstat_temp": -999.0,
}


# --------------------------------------------------------------------------------------------
# Weather
# --------------------------------------------------------------------------------------------


class Weather(NamedTuple):
    """Weather at one instant. Units: degC, %RH, W/m^2, m/s, mbar (= hPa)."""

    temperature: float
    humidity: float
    ghi: float
    dni: float
    dhi: float
    wind_speed: float
    pressure: float


WEATHER_FIELDS: tuple[str, ...] = Weather._fields


@dataclass(frozen=True, slots=True)
class WeatherSeries:
    """A typical year of hourly weather, 8760 rows, row j = local standard hour j..j+1 of Jan 1.

    TMY3 rows are "hour ending" values; each row is placed at the middle of its hour. Values
    between rows are interpolated linearly; the year wraps around (Dec 31 -> Jan 1), and a leap
    year's Feb 29 repeats Feb 28. Only month/day/hour are used, so the series is shifted to
    whatever year is simulated.
    """

    source: str  # where the data came from, for logs and docs
    station: str
    tz_offset_h: float  # local standard time = UTC + tz_offset_h
    latitude: float
    longitude: float
    rows: tuple[Weather, ...]

    def __post_init__(self) -> None:
        if len(self.rows) != YEAR_HOURS:
            raise ValueError(f"a weather series has {YEAR_HOURS} hourly rows, not {len(self.rows)}")

    def at(self, t_ms: int) -> Weather:
        x = _hour_of_year(t_ms) + self.tz_offset_h - 0.5
        x %= YEAR_HOURS
        j = int(x)
        f = x - j
        a = self.rows[j]
        b = self.rows[(j + 1) % YEAR_HOURS]
        if f == 0.0:
            return a
        g = 1.0 - f
        return Weather(
            a.temperature * g + b.temperature * f,
            a.humidity * g + b.humidity * f,
            a.ghi * g + b.ghi * f,
            a.dni * g + b.dni * f,
            a.dhi * g + b.dhi * f,
            a.wind_speed * g + b.wind_speed * f,
            a.pressure * g + b.pressure * f,
        )

    def ranges(self) -> dict[str, tuple[float, float]]:
        """(min, max) of every field over the year; interpolated values stay inside them."""
        return {
            name: (min(r[k] for r in self.rows), max(r[k] for r in self.rows)) for k, name in enumerate(WEATHER_FIELDS)
        }


def _year_start_ms(year: int) -> int:
    return int(datetime(year, 1, 1, tzinfo=UTC).timestamp() * 1000)


_YEAR_STARTS: dict[int, int] = {}


def _hour_of_year(t_ms: int) -> float:
    """Hours since Jan 1 00:00 UTC of t's year, on a 365-day calendar (Feb 29 repeats Feb 28)."""
    year = 1970 + t_ms // (365 * DAY_MS + DAY_MS // 4)  # estimate, corrected below
    start = _YEAR_STARTS.get(year)
    if start is None:
        start = _YEAR_STARTS[year] = _year_start_ms(year)
    while t_ms < start:
        year -= 1
        start = _YEAR_STARTS[year] = _year_start_ms(year)
    nxt = _YEAR_STARTS.get(year + 1)
    if nxt is None:
        nxt = _YEAR_STARTS[year + 1] = _year_start_ms(year + 1)
    if t_ms >= nxt:
        year += 1
        start = nxt
    h = (t_ms - start) / HOUR_MS
    if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) and h >= 59 * 24:
        h -= 24.0
    return h


_MISSING = -9000.0  # TMY3 writes -9900 (and NSRDB -9999) for a missing value


def load_tmy(path: Path | str) -> WeatherSeries:
    """Read a TMY3 CSV (pvlib ships 723170TYA.CSV and 703165TY.csv) with the csv module.

    Line 1: station metadata (USAF id, name, state, UTC offset, latitude, longitude, elevation);
    line 2: column names; then one row per hour, 'hour ending' times 01:00 .. 24:00 in local
    standard time. Rows from different years (a TMY mixes them) are placed by month/day/hour.
    Hours that are absent or missing (-9900) are filled by linear interpolation.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        meta = next(reader, [])
        header = next(reader, [])
        cols = {name.strip(): k for k, name in enumerate(header)}
        wanted = {
            "temperature": "Dry-bulb (C)",
            "humidity": "RHum (%)",
            "ghi": "GHI (W/m^2)",
            "dni": "DNI (W/m^2)",
            "dhi": "DHI (W/m^2)",
            "wind_speed": "Wspd (m/s)",
            "pressure": "Pressure (mbar)",
        }
        needed = ("Date (MM/DD/YYYY)", "Time (HH:MM)", *wanted.values())
        missing = [c for c in needed if c not in cols]
        if missing:
            raise ValueError(f"{path}: not a TMY3 file, columns missing: {', '.join(missing)}")
        try:
            station_id, station_name = meta[0].strip(), meta[1].strip()
            tz = float(meta[3])
            lat, lon = float(meta[4]), float(meta[5])
        except (ValueError, IndexError) as exc:
            raise ValueError(f"{path}:1: not a TMY3 station line: {exc}") from exc
        c_date, c_time = cols["Date (MM/DD/YYYY)"], cols["Time (HH:MM)"]
        idx = [cols[wanted[name]] for name in WEATHER_FIELDS]
        known: list[dict[int, float]] = [{} for _ in WEATHER_FIELDS]
        for line_no, row in enumerate(reader, start=3):
            if not row or not row[0].strip():
                continue
            try:
                month, day, _year = (int(p) for p in row[c_date].split("/"))
                hour = int(row[c_time].split(":")[0])  # hour ending, 1..24
                doy = _DAYS_BEFORE_MONTH[month - 1] + day - 1
                if month == 2 and day == 29:
                    continue
                j = doy * 24 + hour - 1
                if not 0 <= j < YEAR_HOURS:
                    raise ValueError(f"hour {j} outside the year")
                for f, c in enumerate(idx):
                    v = float(row[c])
                    if v > _MISSING and math.isfinite(v):
                        known[f][j] = v
            except (ValueError, IndexError) as exc:
                raise ValueError(f"{path}:{line_no}: bad TMY3 row: {exc}") from exc
    columns = [_fill_year(k, f"{path.name}:{name}") for k, name in zip(known, WEATHER_FIELDS, strict=True)]
    rows = tuple(Weather(*vals) for vals in zip(*columns, strict=True))
    return WeatherSeries(f"TMY3 {station_id} {station_name} ({path.name})", station_name, tz, lat, lon, rows)


_DAYS_BEFORE_MONTH = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)


def _fill_year(known: Mapping[int, float], what: str) -> list[float]:
    if not known:
        raise ValueError(f"{what}: no values")
    out = [0.0] * YEAR_HOURS
    hours = sorted(known)
    for k, h0 in enumerate(hours):
        h1 = hours[(k + 1) % len(hours)]
        v0, v1 = known[h0], known[h1]
        span = (h1 - h0) % YEAR_HOURS or YEAR_HOURS
        for d in range(span):
            out[(h0 + d) % YEAR_HOURS] = v0 + (v1 - v0) * d / span
    return out


def default_tmy_path(name: str = TMY_FILES[0]) -> Path | None:
    """pvlib's bundled TMY3 file, found without importing pvlib; None when pvlib is absent."""
    try:
        spec = importlib.util.find_spec("pvlib")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "data" / name
        if candidate.is_file():
            return candidate
    return None


def synthetic_weather(latitude: float = 36.1, longitude: float = -79.95, tz_offset_h: float = -5.0) -> WeatherSeries:
    """Clear-sky irradiance (Haurwitz) plus smooth seasonal/diurnal temperature, humidity, wind.

    The fallback when no TMY file is available: deterministic, cloudless, plausible for a
    temperate site. Defaults match pvlib's 723170 (Greensboro, NC) so both sources compare.
    """
    rows: list[Weather] = []
    phi = math.radians(latitude)
    for j in range(YEAR_HOURS):
        doy = j // 24 + 1
        local_h = j % 24 + 0.5
        decl = math.radians(23.45) * math.sin(2 * math.pi * (284 + doy) / 365)
        b = 2 * math.pi * (doy - 81) / 364
        eot_min = 9.87 * math.sin(2 * b) - 7.53 * math.cos(b) - 1.5 * math.sin(b)
        solar_h = local_h + (longitude - 15 * tz_offset_h) / 15 + eot_min / 60
        omega = math.radians(15 * (solar_h - 12))
        cosz = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(omega)
        if cosz > 0.01:
            ghi = 1098 * cosz * math.exp(-0.059 / cosz)
            dhi = ghi * (0.1 + 0.1 * (1 - cosz))
            dni = min((ghi - dhi) / cosz, 1000.0)
        else:
            ghi = dni = dhi = 0.0
        season = -math.cos(2 * math.pi * (doy - 20) / 365)  # -1 mid-January, +1 mid-July
        daily = math.cos(2 * math.pi * (local_h - 15) / 24)  # +1 at 15:00
        temp = 14.5 + 11 * season + 5 * daily
        rh = 68 - 18 * daily + 4 * season
        wind = 3.2 - 0.8 * season + 1.2 * daily
        pressure = 982 - 3 * season
        rows.append(Weather(temp, rh, ghi, dni, dhi, wind, pressure))
    return WeatherSeries(
        "synthetic clear-sky model (no TMY data)",
        "synthetic",
        tz_offset_h,
        latitude,
        longitude,
        tuple(rows),
    )


# --------------------------------------------------------------------------------------------
# Fleet
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FleetSpec:
    """What to simulate. Node ids are first_node_id .. first_node_id + nodes - 1; site = node id."""

    nodes: int = 10
    meters_per_node: int = 2
    inverters_per_node: int = 1
    weather_stations_per_node: int = 1
    heat_pumps_per_node: int = 1
    interval_s: float = 60.0
    seed: int = 0
    start_ms: int = DEFAULT_START_MS
    bad_ratio: float = 0.0  # fraction of datums with one out-of-range value (for qRating demos)
    first_node_id: int = 1

    def __post_init__(self) -> None:
        counts = (
            self.nodes,
            self.meters_per_node,
            self.inverters_per_node,
            self.weather_stations_per_node,
            self.heat_pumps_per_node,
            self.first_node_id,
        )
        if any(c < 0 for c in counts):
            raise ValueError("fleet counts and node ids are not negative")
        if round(self.interval_s * 1000) < 1:
            raise ValueError("interval_s is at least 0.001")
        if not 0.0 <= self.bad_ratio <= 1.0:
            raise ValueError("bad_ratio is between 0 and 1")

    @property
    def interval_ms(self) -> int:
        return round(self.interval_s * 1000)


@dataclass(slots=True)
class _Tick:
    """What every device shares at one instant."""

    t_ms: int
    dt_h: float  # hours since the previous tick (0 on the first)
    wx: Weather
    occupancy: float  # 0..1, building use by local time of day and weekday
    ground_c: float  # undisturbed ground temperature
    setback: bool  # thermostat night setback


class _Device:
    node_id: int
    source_id: str

    def reset(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def step(self, tick: _Tick, rnd: random.Random) -> Datum:  # pragma: no cover - overridden
        raise NotImplementedError


class _Meter(_Device):
    """A building's energy meter: load follows occupancy and air-conditioning on hot days."""

    __slots__ = (
        "node_id",
        "source_id",
        "peak_w",
        "base",
        "pf",
        "v_nom",
        "wh0",
        "noise",
        "wh",
        "prev_w",
    )

    def __init__(self, node_id: int, source_id: str, rnd: random.Random) -> None:
        self.node_id, self.source_id = node_id, source_id
        self.peak_w = rnd.uniform(3_000.0, 30_000.0)
        self.base = rnd.uniform(0.2, 0.4)
        self.pf = rnd.uniform(0.92, 0.98)
        self.v_nom = 230.0
        self.wh0 = float(rnd.randrange(1_000_000, 1_000_000_000))
        self.reset()

    def reset(self) -> None:
        self.noise = 0.0
        self.wh = self.wh0
        self.prev_w = -1.0

    def step(self, tick: _Tick, rnd: random.Random) -> Datum:
        u = rnd.random
        self.noise = 0.9 * self.noise + 0.05 * (u() - 0.5)
        cooling = 1.0 + 0.02 * max(0.0, tick.wx.temperature - 24.0)
        w = self.peak_w * (self.base + (1.0 - self.base) * tick.occupancy) * cooling
        w *= 1.0 + self.noise
        if self.prev_w >= 0.0:
            self.wh += (self.prev_w + w) * 0.5 * tick.dt_h
        self.prev_w = w
        v = self.v_nom * (1.0 - 0.02 * w / self.peak_w) + 1.5 * (u() - 0.5)
        return Datum(
            self.node_id,
            self.source_id,
            tick.t_ms,
            {"watts": w, "current": w / (v * self.pf), "voltage": v},
            {"wattHours": self.wh},
            {"mode": "auto"},
        )


class _Inverter(_Device):
    """PV inverter: irradiance x panel area x module efficiency, temperature-derated, clipped.

    `state` is a SunSpec operating state, lower case: `sleeping` at night, `mppt` by day.
    """

    __slots__ = (
        "node_id",
        "source_id",
        "area",
        "eff",
        "shade",
        "ac_max",
        "wh0",
        "wh",
        "prev_w",
    )

    def __init__(self, node_id: int, source_id: str, rnd: random.Random) -> None:
        self.node_id, self.source_id = node_id, source_id
        self.area = rnd.uniform(20.0, 80.0)  # m^2 of panels
        self.eff = rnd.uniform(0.17, 0.21)  # module efficiency at 25 degC
        self.shade = rnd.uniform(0.9, 1.0)  # soiling, shading, wiring
        self.ac_max = self.area * 1000.0 * self.eff / 1.15  # DC/AC ratio 1.15
        self.wh0 = float(rnd.randrange(0, 50_000_000))
        self.reset()

    def reset(self) -> None:
        self.wh = self.wh0
        self.prev_w = -1.0

    def step(self, tick: _Tick, rnd: random.Random) -> Datum:
        wx = tick.wx
        ghi = wx.ghi
        r = rnd.random()
        if ghi < 5.0:
            w = 0.0
            state = "sleeping"
        else:
            t_cell = wx.temperature + ghi * (25.0 / 800.0)
            dc = ghi * self.area * self.eff * self.shade * (1.0 - 0.004 * (t_cell - 25.0))
            w = min(dc * 0.96 * (1.0 + 0.02 * (r - 0.5)), self.ac_max)
            if w < 0.0:
                w = 0.0
            state = "mppt"
        if self.prev_w >= 0.0:
            self.wh += (self.prev_w + w) * 0.5 * tick.dt_h
        self.prev_w = w
        return Datum(
            self.node_id,
            self.source_id,
            tick.t_ms,
            {"watts": w},
            {"wattHours": self.wh},
            {"state": state},
        )


class _WeatherStation(_Device):
    """Reports the weather series, interpolated to the sample time.

    SolarNetwork AtmosphericDatum names where it has one: `wspeed` (m/s), `atm` (Pa).
    """

    __slots__ = ("node_id", "source_id")

    def __init__(self, node_id: int, source_id: str) -> None:
        self.node_id, self.source_id = node_id, source_id

    def reset(self) -> None:
        pass

    def step(self, tick: _Tick, rnd: random.Random) -> Datum:
        wx = tick.wx
        return Datum(
            self.node_id,
            self.source_id,
            tick.t_ms,
            {
                "temperature": wx.temperature,
                "humidity": wx.humidity,
                "ghi": wx.ghi,
                "dni": wx.dni,
                "dhi": wx.dhi,
                "wspeed": wx.wind_speed,
                "atm": wx.pressure * 100.0,  # mbar -> Pa
            },
        )


_CP_GLYCOL = 3.9  # kJ/(kg K), 20 % propylene glycol; 1 L ~ 1.03 kg
_CP_WATER = 4.18


class _HeatPump(_Device):
    """Two-stage water-to-water ground-source heat pump with electric auxiliary heat.

    Heating demand = UA x (balance point - outdoor temperature); cooling above 24 degC. Output is
    the interval average (no on/off cycling). COP falls as the ground loop cools, and the loop
    cools as heat is drawn from it, so colder weather costs more electricity per kWh of heat.
    """

    __slots__ = (
        "node_id",
        "source_id",
        "ua",
        "balance",
        "cap",
        "set_day",
        "set_night",
        "load_flow",
        "loop",
        "room_err",
        "prev_load",
        "prev_src",
        "load_wh",
        "src_wh",
    )

    def __init__(self, node_id: int, source_id: str, rnd: random.Random) -> None:
        self.node_id, self.source_id = node_id, source_id
        self.ua = rnd.uniform(0.2, 0.45)  # kW/K building heat loss
        self.balance = rnd.uniform(14.5, 17.0)  # degC outdoors where heating starts
        self.cap = rnd.uniform(7.0, 12.0)  # kW heating capacity at stage 2
        self.set_day = rnd.choice((20.0, 20.5, 21.0, 21.5))
        self.set_night = self.set_day - rnd.choice((0.0, 1.5, 2.5))
        self.load_flow = rnd.uniform(0.35, 0.5)  # L/s hydronic loop
        self.reset()

    def reset(self) -> None:
        self.loop: float | None = None  # ground loop temperature, settles from the first tick
        self.room_err = 0.0
        self.prev_load = -1.0
        self.prev_src = 0.0
        self.load_wh = 0.0
        self.src_wh = 0.0

    def step(self, tick: _Tick, rnd: random.Random) -> Datum:
        u = rnd.random
        t_out = tick.wx.temperature
        tstat_set = self.set_night if tick.setback else self.set_day
        heat_kw = self.ua * (self.balance + (tstat_set - 20.0) - t_out)
        cool_kw = self.ua * 0.8 * (t_out - 24.0)
        if heat_kw > 0.05:
            mode = 1
            demand = heat_kw
        elif cool_kw > 0.05:
            mode = -1
            demand = cool_kw
        else:
            mode = 0
            demand = 0.0
        q_hp = min(demand, self.cap)  # kW delivered by the compressor
        aux_kw = demand - q_hp if mode == 1 else 0.0
        stage = 0.0 if mode == 0 else (1.0 if q_hp <= 0.7 * self.cap else 2.0)

        loop = self.loop
        target = tick.ground_c - mode * 0.6 * q_hp
        if loop is None:
            loop = target
        else:
            alpha = 1.0 - math.exp(-tick.dt_h)  # ~1 h time constant
            loop += (target - loop) * alpha
        self.loop = loop

        if mode == 1:
            cop = 3.3 + 0.09 * loop + (0.2 if stage == 1.0 else 0.0)
            load_supply = min(50.0, max(32.0, 42.0 - 0.4 * t_out))
        elif mode == -1:
            cop = 5.8 - 0.1 * loop
            load_supply = 9.0
        else:
            cop = 1.0
            load_supply = 0.0
        comp_kw = q_hp / cop if mode else 0.0
        # heat taken from the ground (heating) or rejected to it (cooling)
        src_kw = q_hp - comp_kw if mode == 1 else (q_hp + comp_kw if mode == -1 else 0.0)
        src_flow = 0.0 if mode == 0 else (0.35 if stage == 1.0 else 0.55)  # L/s
        pump_w = 0.0 if mode == 0 else (120.0 if stage == 1.0 else 230.0)
        fans_w = 0.0 if mode == 0 else 60.0 + 20.0 * stage

        noise = 0.05 * (u() - 0.5)
        src_supply = loop + noise
        src_dt = mode * src_kw / (src_flow * 1.03 * _CP_GLYCOL) if src_flow > 0.0 else 0.0
        src_return = src_supply - src_dt
        load_kw = q_hp + aux_kw  # to the building, kW, unsigned
        if mode == 0:
            # idle: pipes drift towards the plant room temperature, nothing flows
            load_supply = 22.0 + noise
            load_return = load_supply
        else:
            load_return = load_supply - mode * load_kw / (self.load_flow * _CP_WATER)
            load_supply += noise
        overload = max(0.0, heat_kw - self.cap - aux_kw) if mode == 1 else 0.0
        self.room_err = 0.8 * self.room_err + 0.2 * (0.6 * (u() - 0.5) - 0.3 * overload)
        heat_w = mode * load_kw * 1000.0
        load_w = load_kw * 1000.0
        src_w = src_kw * 1000.0
        if self.prev_load >= 0.0:
            self.load_wh += (self.prev_load + load_w) * 0.5 * tick.dt_h
            self.src_wh += (self.prev_src + src_w) * 0.5 * tick.dt_h
        self.prev_load, self.prev_src = load_w, src_w
        return Datum(
            self.node_id,
            self.source_id,
            tick.t_ms,
            {
                "heatpump_power": comp_kw * 1000.0 + fans_w,
                "heatpump_aux": aux_kw * 1000.0,
                "source_supplytemp": src_supply,
                "source_returntemp": src_return,
                "source_tempdiff": src_supply - src_return,
                "sourcefluid_flowrate": src_flow * 60.0,  # L/s -> L/min
                "sourcefluid_pump_power": pump_w,
                "load_pumpsfans": fans_w,
                "load_supplytemp": load_supply,
                "load_returntemp": load_return,
                "load_tempdiff": load_supply - load_return,
                "tstat_set": tstat_set,
                "tstat_temp": tstat_set + self.room_err,
                "compressor_stage": stage,
                "outdoor_temperature": t_out,
                "heat_flow_rate": heat_w,
            },
            {"loadside_heat": self.load_wh, "sourceside_heat": self.src_wh},
            {"mode": "heating" if mode == 1 else ("cooling" if mode == -1 else "idle")},
        )


# Occupancy by local hour: low at night, morning and evening peaks; weekends flatter.
_WEEKDAY = (
    0.05,
    0.04,
    0.04,
    0.04,
    0.06,
    0.15,
    0.45,
    0.75,
    0.8,
    0.7,
    0.65,
    0.7,
    0.72,
    0.7,
    0.68,
    0.7,
    0.8,
    0.95,
    1.0,
    0.9,
    0.7,
    0.45,
    0.2,
    0.1,
)
_WEEKEND = (
    0.08,
    0.06,
    0.05,
    0.05,
    0.05,
    0.08,
    0.15,
    0.3,
    0.5,
    0.6,
    0.62,
    0.6,
    0.58,
    0.55,
    0.55,
    0.58,
    0.65,
    0.75,
    0.8,
    0.75,
    0.6,
    0.4,
    0.2,
    0.12,
)


class Fleet:
    """A deterministic fleet of gateways. One cursor: not for concurrent use from threads."""

    def __init__(self, spec: FleetSpec, weather: WeatherSeries | None = None) -> None:
        self.spec = spec
        self.weather = weather if weather is not None else synthetic_weather()
        self._interval_ms = spec.interval_ms
        self._dt_h = self._interval_ms / HOUR_MS
        self._tz_ms = round(self.weather.tz_offset_h * HOUR_MS)
        setup = random.Random(f"fleet-setup:{spec.seed}")
        devices: list[_Device] = []
        for k in range(spec.nodes):
            node = spec.first_node_id + k
            for n in range(1, spec.meters_per_node + 1):
                devices.append(_Meter(node, f"/S{node}/B1/M{n}", setup))
            for n in range(1, spec.inverters_per_node + 1):
                devices.append(_Inverter(node, f"/S{node}/INV{n}", setup))
            for n in range(1, spec.weather_stations_per_node + 1):
                wx_id = f"/S{node}/WX" if n == 1 else f"/S{node}/WX{n}"
                devices.append(_WeatherStation(node, wx_id))
            for _ in range(spec.heat_pumps_per_node):
                hp_id = uuid.UUID(int=setup.getrandbits(128), version=4)
                devices.append(_HeatPump(node, f"/otherm-data/{hp_id}", setup))
        self._devices = tuple(devices)
        self._reset()

    # -- public -------------------------------------------------------------------------------

    @property
    def source_ids(self) -> list[tuple[int, str]]:
        """Every (node_id, source_id) stream of the fleet, in emission order."""
        return [(d.node_id, d.source_id) for d in self._devices]

    def datums_between(self, t0_ms: int, t1_ms: int) -> Iterator[Datum]:
        """All datums with t0_ms <= created < t1_ms, in time order (one datum per device a tick)."""
        k0, k1 = self._tick_range(t0_ms, t1_ms)
        for k in range(k0, k1):
            yield from self._tick(k)

    # -- internals ----------------------------------------------------------------------------

    def _t(self, k: int) -> int:
        return self.spec.start_ms + k * self._interval_ms

    def _tick_range(self, t0_ms: int, t1_ms: int) -> tuple[int, int]:
        step = self._interval_ms
        k0 = max(0, -((self.spec.start_ms - t0_ms) // step))  # ceil
        k1 = max(0, -((self.spec.start_ms - t1_ms) // step))
        return k0, k1

    def _reset(self) -> None:
        self._next_k = 0
        self._rnd = random.Random(f"fleet-noise:{self.spec.seed}")
        self._faults = random.Random(f"fleet-faults:{self.spec.seed}")
        for d in self._devices:
            d.reset()

    def _tick(self, k: int) -> list[Datum]:
        if k < self._next_k:
            self._reset()
        while self._next_k < k:  # catch up: state (energy, loop temperature) needs every tick
            self._step(self._next_k)
        return self._step(k)

    def _step(self, k: int) -> list[Datum]:
        t = self._t(k)
        local = t + self._tz_ms
        day, ms_of_day = divmod(local, DAY_MS)
        hour_f = ms_of_day / HOUR_MS
        h = int(hour_f)
        f = hour_f - h
        weekend = (day + 3) % 7 >= 5  # 1970-01-01 was a Thursday: (day + 3) % 7 == 0 on Mondays
        prof = _WEEKEND if weekend else _WEEKDAY
        occupancy = prof[h] * (1.0 - f) + prof[(h + 1) % 24] * f
        doy = (day % 365.2425) / 365.2425  # fraction of the year, good enough for the ground
        ground = 13.0 + 3.0 * math.cos(2 * math.pi * (doy - 0.62))  # warmest early autumn
        tick = _Tick(
            t,
            self._dt_h if k > 0 else 0.0,
            self.weather.at(t),
            occupancy,
            ground,
            h >= 23 or h < 6,
        )
        rnd = self._rnd
        out = [d.step(tick, rnd) for d in self._devices]
        ratio = self.spec.bad_ratio
        if ratio > 0.0:
            faults = self._faults.random
            for n, datum in enumerate(out):
                if faults() < ratio:
                    out[n] = _corrupt(datum, self._faults)
        self._next_k = k + 1
        return out


def _corrupt(datum: Datum, rnd: random.Random) -> Datum:
    names = [name for name in datum.i if name in FAULT_VALUES]
    if not names:
        names = list(datum.i)
    if not names:
        return datum
    name = rnd.choice(names)
    i = dict(datum.i)
    i[name] = FAULT_VALUES.get(name, -999.0)
    return datum.with_samples(i, datum.a, datum.s)


__all__ = [
    "DEFAULT_START_MS",
    "FAULT_VALUES",
    "Fleet",
    "FleetSpec",
    "Weather",
    "WeatherSeries",
    "default_tmy_path",
    "load_tmy",
    "synthetic_weather",
]
