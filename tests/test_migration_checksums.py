"""Released migrations are never edited: each file's SHA-256 is pinned here, so an
edit fails CI before it can stop a database that applied the file from booting.
A change to the schema goes into a new numbered file (and its checksum here)."""

from __future__ import annotations

import hashlib

from storage.postgres.migrations import load_migrations

#: Every migration file shipped, by name, with the SHA-256 of its text (as the
#: server records it in event_streaming.schema_version).
RELEASED = {
    "001_streams_and_events.sql": (
        "dfaeabd903ce4c1ddcd4a52a14fa43910bc13847a4d02fd06ad11b07484b581b"
    ),
    "002_queues.sql": "315630c720b9b0e9e70d66c9960447918e2a9a231d460f65c00291dff68243dd",
    "003_consumers.sql": "285f6ba4d9bb2e4e7251c977fe858db4f8d0a20e45586040db7e600e222c4db4",
    "004_clean_writes.sql": "86e16e62ddff89f6413f086645f00a225bbc21c4c56adb747509a9c16fe989d5",
    "005_global_log.sql": "2cf7b9080eb988fb6087b4f727cad87082b295ae3f1476e358bdee0bdd307005",
    "006_queue_features.sql": "3496e486380ae851efd555301890acb17e52100f1a3992f125091fdcc527743f",
}


def test_released_migrations_are_unchanged() -> None:
    shipped = {m.file_name: m for m in load_migrations()}
    changed = [
        name
        for name, checksum in RELEASED.items()
        if name not in shipped or shipped[name].checksum != checksum
    ]
    assert not changed, (
        f"released migration(s) edited or removed: {changed}; restore them and put the "
        "change in a new numbered file"
    )


def test_every_migration_is_pinned() -> None:
    unpinned = [m.file_name for m in load_migrations() if m.file_name not in RELEASED]
    assert not unpinned, f"pin the checksum of new migration(s) here: {unpinned}"


def test_the_pins_are_the_checksums_the_server_records() -> None:
    for migration in load_migrations():
        assert migration.checksum == hashlib.sha256(migration.sql.encode("utf-8")).hexdigest()
