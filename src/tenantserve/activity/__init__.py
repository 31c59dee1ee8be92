"""Recent activity in bounded memory: request series, cache events, hot tenants and models."""

from __future__ import annotations

from tenantserve.activity.events import CacheEvent, Event, EventLog
from tenantserve.activity.hot import HotEntry, HotList
from tenantserve.activity.model_labels import OTHER, ModelLabels
from tenantserve.activity.recorder import Activity, ActivitySnapshot, Totals
from tenantserve.activity.series import RequestSeries, SeriesPoint, WindowSummary
from tenantserve.activity.space_saving import SpaceSaving

__all__ = [
    "OTHER",
    "Activity",
    "ActivitySnapshot",
    "CacheEvent",
    "Event",
    "EventLog",
    "HotEntry",
    "HotList",
    "ModelLabels",
    "RequestSeries",
    "SeriesPoint",
    "SpaceSaving",
    "Totals",
    "WindowSummary",
]
