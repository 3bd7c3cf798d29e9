"""Maintenance windows: when a cluster may be worked on, in the cluster's own time zone, with Cluster-Aware
Updating's schedule options (DaysOfWeek, WeeksOfMonth). A window that ends before it starts crosses midnight:
Saturday 22:00 to 04:00 ends on Sunday. The day it is named by is the day it opens."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Day = Literal["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
DAYS: tuple[Day, ...] = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")  # weekday()
CRON_DAYS = {"Sunday": 0, "Monday": 1, "Tuesday": 2, "Wednesday": 3, "Thursday": 4, "Friday": 5, "Saturday": 6}


class Window(BaseModel):
    """One recurring window. `weeks_of_month` as CAU's -WeeksOfMonth: week n holds days 7(n-1)+1 to 7n of the
    month, so "the second Tuesday" is days_of_week [Tuesday], weeks_of_month [2]."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: str = Field("UTC", description="an IANA time zone, such as Europe/Oslo")
    days_of_week: list[Day] = Field(default_factory=lambda: list(CRON_DAYS), description="CAU's DaysOfWeek")
    weeks_of_month: list[int] = Field(default_factory=list, description="CAU's WeeksOfMonth (1-5); empty: every week")
    start: time = Field(description="local time the window opens, HH:MM")
    end: time = Field(description="local time it closes; before start: the next day")

    @field_validator("start", "end", mode="before")
    @classmethod
    def _clock(cls, v: object) -> object:
        if isinstance(v, int) and 0 <= v < 24 * 60:  # YAML 1.1 reads an unquoted 22:00 as 1320 (base 60)
            return time(v // 60, v % 60)
        if isinstance(v, str) and len(v) == 4 and v[1] == ":":  # 1:00
            return "0" + v
        return v

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            near = sorted(z for z in available_timezones() if z.lower().endswith(v.lower().split("/")[-1]))[:3]
            raise ValueError(f"unknown time zone {v!r}: give an IANA name such as Europe/Oslo or America/Chicago"
                             + (f" (did you mean {', '.join(near)}?)" if near else "")) from None
        return v

    @field_validator("weeks_of_month")
    @classmethod
    def _weeks(cls, v: list[int]) -> list[int]:
        bad = [w for w in v if not 1 <= w <= 5]
        if bad:
            raise ValueError(f"week {bad[0]} of a month does not exist: CAU's WeeksOfMonth takes 1 to 5")
        return sorted(set(v))

    @field_validator("days_of_week")
    @classmethod
    def _days(cls, v: list[Day]) -> list[Day]:
        if not v:
            raise ValueError("no day: name at least one of Sunday to Saturday")
        return v

    @model_validator(mode="after")
    def _length(self) -> Window:
        if self.start == self.end:
            raise ValueError(f"end: {self.end:%H:%M} equals start: a window needs a length (an end before the start "
                             "closes the next day)")
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def length(self) -> timedelta:
        day = date(2001, 1, 1)
        close = datetime.combine(day + timedelta(days=self.end <= self.start), self.end)
        return close - datetime.combine(day, self.start)

    def _opens_on(self, day: date) -> bool:
        return DAYS[day.weekday()] in self.days_of_week and (
            not self.weeks_of_month or (day.day - 1) // 7 + 1 in self.weeks_of_month)

    def occurrences(self, after: datetime) -> Iterator[tuple[datetime, datetime]]:
        """(open, close) of each occurrence that has not closed by `after`, in order, as aware datetimes. Wall
        times follow the zone's daylight saving: a 22:00 window opens at 22:00 local on both sides of it."""
        local = after.astimezone(self.zone)
        day = local.date() - timedelta(days=1)  # yesterday's may still be open (it crosses midnight)
        for _ in range(400):
            if self._opens_on(day):
                opens = datetime.combine(day, self.start, tzinfo=self.zone)
                closes = datetime.combine(day + timedelta(days=self.end <= self.start), self.end, tzinfo=self.zone)
                if closes > after:
                    yield opens.astimezone(UTC), closes.astimezone(UTC)
            day += timedelta(days=1)

    def current_or_next(self, now: datetime) -> tuple[datetime, datetime]:
        return next(self.occurrences(now))

    def remaining(self, now: datetime) -> timedelta:
        """Time left in the window open now (zero when it is closed)."""
        opens, closes = self.current_or_next(now)
        return closes - now if opens <= now else timedelta(0)

    def cron(self) -> str:
        """The schedule that starts a run when the window opens (Prefect Cron with this window's time zone). Weeks of
        the month are checked by the flow itself: cron cannot say "the second Tuesday"."""
        days = ",".join(str(CRON_DAYS[d]) for d in self.days_of_week)
        return f"{self.start.minute} {self.start.hour} * * {days}"

    def describe(self) -> str:
        days = "daily" if len(self.days_of_week) == 7 else ",".join(d[:3] for d in self.days_of_week)
        weeks = f" weeks {','.join(map(str, self.weeks_of_month))} of the month" if self.weeks_of_month else ""
        return f"{days}{weeks} {self.start:%H:%M}-{self.end:%H:%M} {self.timezone}"


class TagWindow(Window):
    """A window for every cluster whose tags include all of `match`."""

    match: dict[str, str] = Field(min_length=1, description="tags a cluster must carry, e.g. {ring: canary}")

    def applies(self, tags: dict[str, str]) -> bool:
        return all(tags.get(k) == v for k, v in self.match.items())
