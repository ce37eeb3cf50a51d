"""Datums already past their datastream's storage period when they arrive (issue 12): counted,
per sample and per datum, by the worker's accept step and by the function the reports use."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from processors.binding import Catalog, load_catalog
from processors.catalog_versions import VersionedCatalog
from processors.datum import Datum
from processors.rows import DAY_MS, ExpiryCount, RawColumns, accept_batch, count_expired, expired_samples, is_expired
from processors.simulate import Fleet, FleetSpec

SAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "datamodels"
JAN_1_2023 = 1_672_531_200_000
SPEC = FleetSpec(nodes=1, interval_s=600, seed=3, start_ms=JAN_1_2023)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(SAMPLES)


def _datums(start_ms: int) -> list[Datum]:
    spec = dataclasses.replace(SPEC, start_ms=start_ms)
    return list(Fleet(spec).datums_between(start_ms, start_ms + 2 * 3_600_000))


def _expected(rows: RawColumns, now_ms: int) -> int:
    return sum(1 for c, t in zip(rows.created, rows.ttl_days, strict=True) if t > 0 and c + t * DAY_MS <= now_ms)


def test_is_expired_edges() -> None:
    assert is_expired(0, 1, DAY_MS)  # exactly at the end of the period: gone
    assert not is_expired(0, 1, DAY_MS - 1)
    assert not is_expired(0, None, 10**15)  # no limit
    assert not is_expired(0, 0, 10**15)
    assert not is_expired(0, "not stored", 10**15)


def test_backfill_past_the_short_periods_counts_those_samples(catalog: Catalog) -> None:
    datums = _datums(JAN_1_2023)
    # 2023-01-01 + 120 days: the 90-day datastreams are past, the 2- and 5-year ones are not
    now_ms = JAN_1_2023 + 120 * DAY_MS
    result = accept_batch(datums, now_ms, VersionedCatalog((), (catalog,)))
    assert result.datums_accepted == len(datums) and not result.refused
    assert 0 < result.samples_expired < len(result.rows)
    assert result.samples_expired == _expected(result.rows, now_ms)
    per_datum = [expired_samples(d, catalog, now_ms) for d in datums]
    assert sum(per_datum) == result.samples_expired
    assert result.datums_expired == sum(1 for n in per_datum if n) > 0


def test_backfill_past_every_period_expires_every_bound_sample(catalog: Catalog) -> None:
    datums = _datums(JAN_1_2023)
    now_ms = JAN_1_2023 + 6 * 366 * DAY_MS  # past the longest period (5 years)
    result = accept_batch(datums, now_ms, catalog)
    stored_with_period = sum(1 for t in result.rows.ttl_days if t > 0)
    assert result.samples_expired == stored_with_period > 0
    assert result.datums_expired == len(datums)
    counted = count_expired(datums, VersionedCatalog((), (catalog,)), now_ms)
    assert (counted.samples, counted.datums) == (result.samples_expired, result.datums_expired)


def test_live_data_expires_nothing(catalog: Catalog) -> None:
    datums = _datums(JAN_1_2023)
    result = accept_batch(datums, JAN_1_2023 + 3 * 3_600_000, catalog)
    assert result.samples_expired == result.datums_expired == 0
    assert count_expired(datums, catalog, JAN_1_2023 + 3 * 3_600_000) == ExpiryCount()


def test_without_a_catalog_nothing_is_known_to_expire() -> None:
    datums = _datums(JAN_1_2023)
    result = accept_batch(datums, JAN_1_2023 + 10 * 366 * DAY_MS)
    assert result.samples_expired == 0 and len(result.rows) > 0
    assert count_expired(datums, None, JAN_1_2023 + 10 * 366 * DAY_MS) == ExpiryCount()


def test_expiry_report_counts_what_is_sent_and_says_nothing_without_a_catalog(catalog: Catalog) -> None:
    from pipeline.gateway.expiry import ExpiryReport

    datums = _datums(JAN_1_2023)
    now_ms = JAN_1_2023 + 120 * DAY_MS
    report = ExpiryReport(VersionedCatalog((), (catalog,)), clock_ms=lambda: now_ms)
    report.see(datums[:10])
    report.see(datums[10:])
    assert report.count == count_expired(datums, catalog, now_ms)
    assert f"{report.count.datums} datums / {report.count.samples} samples" in report.summary()
    blind = ExpiryReport(None, clock_ms=lambda: now_ms)
    blind.see(datums)
    assert blind.count == ExpiryCount() and blind.summary() == ""
    assert ExpiryReport.from_dsn("").catalog is None
