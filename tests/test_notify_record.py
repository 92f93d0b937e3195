"""The notify agent's record of what it told: where it lives, bounded, replaced whole."""

from __future__ import annotations

import json
from pathlib import Path

from pgod.ctl import notify_record
from pgod.ctl.notify_record import NotifiedRecord, build_key, default_path


def test_it_lives_under_xdg_state_home_or_the_xdg_default(monkeypatch, tmp_path):
    assert default_path({"XDG_STATE_HOME": str(tmp_path)}) == tmp_path / "pgod" / "notified.json"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for unset in ({}, {"XDG_STATE_HOME": ""}, {"XDG_STATE_HOME": "relative/path"}):
        assert default_path(unset) == tmp_path / "home" / ".local" / "state" / "pgod" / "notified.json"


def test_what_was_told_is_known_to_the_next_reader(tmp_path):
    path = tmp_path / "state" / "pgod" / "notified.json"
    build = {"id": 7, "finished_at": 1764600000.123456}
    NotifiedRecord(path).remember("lua", "ready", build_key(build))
    again = NotifiedRecord(path)
    assert again.told("lua", "ready", build_key(build))
    assert not again.told("lua", "failed", build_key(build))
    assert not again.told("lua", "ready", build_key({"id": 7, "finished_at": 1764600000.123457}))
    assert (path.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["notified.json"], "no temporary file is left behind"


def test_the_record_is_bounded_forgetting_the_least_recently_told(tmp_path, monkeypatch):
    monkeypatch.setattr(notify_record, "MAX_PACKAGES", 3)
    path = tmp_path / "notified.json"
    record = NotifiedRecord(path)
    for name in ("a", "b", "c"):
        record.remember(name, "ready", "1@1.0")
    record.remember("a", "failed", "2@2.0")  # a is now the most recent
    record.remember("d", "ready", "1@1.0")
    assert list(json.loads(path.read_text())["packages"]) == ["c", "a", "d"]
    assert NotifiedRecord(path).told("a", "ready", "1@1.0")


def test_a_damaged_or_foreign_record_is_ignored_not_fatal(tmp_path):
    path = tmp_path / "notified.json"
    for content in (b"{not json", b'{"version": 99, "packages": {}}', b"[]", b" " * (notify_record.MAX_RECORD_BYTES + 1)):
        path.write_bytes(content)
        record = NotifiedRecord(path)
        assert not record.told("lua", "ready", "1@1.0")
        record.remember("lua", "ready", "1@1.0")
        assert NotifiedRecord(path).told("lua", "ready", "1@1.0")


def test_an_unwritable_record_does_not_stop_the_agent(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    record = NotifiedRecord(Path(blocker / "pgod" / "notified.json"))
    record.remember("lua", "ready", "1@1.0")  # logged, not raised
    assert record.told("lua", "ready", "1@1.0")
