"""Sample metadata shared by the unit and integration tests of the history log."""

from __future__ import annotations

from typing import Any


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
