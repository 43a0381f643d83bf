"""The session rows' datetimes as the database's text: the same as Django's own adaptation."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from django.db import connection

from heartbeat_app import recorder

VALUES = [
    datetime(2026, 12, 2, 15, 4, 5, 123456, tzinfo=UTC),
    datetime(2026, 12, 2, 15, 4, 5, tzinfo=UTC),  # no microseconds: no fraction in the text
    datetime.fromtimestamp(1_800_000_000.5, tz=UTC),
    datetime(2026, 12, 2, 16, 4, 5, 7, tzinfo=timezone(timedelta(hours=1))),  # not UTC
]


@pytest.mark.django_db
@pytest.mark.parametrize("value", VALUES, ids=str)
def test_each_datetime_is_the_text_django_would_give_it(value):
    assert recorder._datetime_text()(value) == str(
        connection.ops.adapt_datetimefield_value(value))


def test_rows_of_a_checkpoint_round_trip_through_the_database(db):
    """Written by touch() with the text made here, read back by the ORM as the same instants."""
    from heartbeat_app.instance import instance_id
    from heartbeat_app.models import Session

    now = VALUES[0]
    row = Session(id="t" * 32, user_key="k", tab="t", instance_id=instance_id(),
                  opened_at=now, last_seen_at=now)
    recorder.write([row], [], [], 1, now)
    seen = VALUES[3]
    checkpoint = {**recorder._as_checkpoint(row), "last_seen_at": seen,
                  "recorded_at": VALUES[1]}
    recorder.touch([checkpoint])
    stored = Session.objects.get(pk=row.pk)
    assert stored.last_seen_at == seen and stored.recorded_at == VALUES[1]
