"""Sample data shared by several test modules (and the benchmarks): datamodels, oTherm's field names."""

from __future__ import annotations

from typing import Any

# oTherm's field dictionary (gshp-analysis db_tools/influx_lp_writer.py): what its heat pumps
# report, the two cumulative heat meters last.
OTHERM_FIELDS = (
    "heatpump_power",
    "heatpump_aux",
    "source_supplytemp",
    "source_returntemp",
    "source_tempdiff",
    "sourcefluid_flowrate",
    "sourcefluid_pump_power",
    "load_pumpsfans",
    "load_supplytemp",
    "load_returntemp",
    "load_tempdiff",
    "tstat_set",
    "tstat_temp",
    "compressor_stage",
    "outdoor_temperature",
    "heat_flow_rate",
    "loadside_heat",
    "sourceside_heat",
)


def health_model(qrating: dict[str, Any]) -> dict[str, Any]:
    """The 'health' datamodel: one datastream, heart rate, kept 30 days, scored by `qrating`."""
    return {
        "identifier": "health",
        "name": "health",
        "description": "heart monitoring",
        "version": "1.2",
        "categories": [
            {
                "identifier": "heart",
                "name": "heart",
                "datastreams": [
                    {
                        "identifier": "health.heart.rate",
                        "name": "rate",
                        "description": "beats per minute",
                        "schema": {"type": "number"},
                        "storage": {"period": "DAYS", "total": 30},
                        "qrating": qrating,
                    }
                ],
            }
        ],
    }
