"""The kinds of change a plan shows, shared by the planner and the services that plan their part."""

from __future__ import annotations

from enum import StrEnum


class Change(StrEnum):
    CREATE = "+"
    UPDATE = "~"
    REPLACE = "-/+"
    DELETE = "-"
    NOOP = "="
    BLOCKED = "!"  # cannot be planned now (a host is unreachable); the rest is planned
