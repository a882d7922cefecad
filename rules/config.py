"""Tuning knobs of the rule engine: the site file's ``alarm_management:`` section (park.site)."""

from park.site import AlarmManagement, SeverityDefaults

__all__ = ["AlarmManagement", "SeverityDefaults"]
