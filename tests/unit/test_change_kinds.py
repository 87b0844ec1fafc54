"""The change record's kinds (core/changes.py): what the log and other processes send is read
into a known kind, and anything this version does not know drops everything and names nothing."""

from __future__ import annotations

from keyplane.core.changes import RESET, Change, ChangeKind, heard


def test_every_kind_reads_back_from_its_stored_name() -> None:
    for kind in ChangeKind:
        assert ChangeKind.of(kind.value) is kind
        assert Change.logged(7, kind.value, "ref_1", "loc_1").kind is kind
    assert ChangeKind.of("KEY") is None and ChangeKind.of("key\n") is None
    assert ChangeKind.of(None) is None and ChangeKind.of(["key"]) is None


def test_an_unknown_kind_in_the_log_is_a_reset_that_names_nothing() -> None:
    change = Change.logged(9, "webhook", "whk_secret_id", "loc_1", frozenset({"loc_2"}))
    assert (change.position, change.kind, change.ref) == (9, RESET, "*")
    assert change.tenant_id is None and change.also == frozenset()
    assert change.visible_to("loc_3")  # every tenant's verifier drops its cache
    assert change.as_json() == {"position": 9, "kind": "all", "ref": "*"}


def test_a_known_kind_keeps_its_tenant_and_stays_with_it() -> None:
    change = Change.logged(3, "key", "key_1", "loc_1")
    assert change.as_json() == {"position": 3, "kind": "key", "ref": "key_1"}
    assert change.visible_to("loc_1") and change.visible_to(None)
    assert not change.visible_to("loc_2")


def test_a_change_heard_from_another_process() -> None:
    assert heard("principal", "mem_1") == (ChangeKind.PRINCIPAL, "mem_1")
    assert heard("from-a-newer-version", "x_1") == (RESET, "*")
