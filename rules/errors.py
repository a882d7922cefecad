"""The rule stage's exception family."""

from __future__ import annotations

from park.errors import HazardwatchError


class RulesError(HazardwatchError):
    """Raised by the rule stage."""


class AlarmNotFound(RulesError):
    def __init__(self, alarm_id: int) -> None:
        self.alarm_id = alarm_id
        super().__init__(f"alarm {alarm_id} does not exist or is already closed")


class InvalidTransition(RulesError):
    def __init__(self, alarm_id: int, state: str, action: str) -> None:
        self.alarm_id, self.state, self.action = alarm_id, state, action
        super().__init__(f"alarm {alarm_id} is {state}: cannot {action}")
