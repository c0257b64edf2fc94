"""The presence registry (runtimed/daemon/web/presence.py): ephemeral places of viewers,
bounded input, socket clients listed without a place."""

from __future__ import annotations

from runtimed.daemon.web.presence import MAX_HEADS, PresenceRegistry

HEAD = "ab" * 32


def test_a_cursor_is_kept_with_its_heads_and_dropped_without_a_cell() -> None:
    reg = PresenceRegistry()
    v = reg.join("nb")
    reg.update(v, cell_id="c1", editing=True, name=None, anchor=3, head=7, heads=[HEAD])
    (info,) = reg.viewers("nb")
    assert (info.cell_id, info.anchor, info.head, info.heads) == ("c1", 3, 7, [HEAD])
    reg.update(v, cell_id=None, editing=False, name=None, anchor=3, head=7, heads=[HEAD])
    (info,) = reg.viewers("nb")
    assert (info.anchor, info.head, info.heads) == (None, None, None)


def test_bad_offsets_and_heads_are_dropped_not_stored() -> None:
    reg = PresenceRegistry()
    v = reg.join("nb")
    reg.update(v, cell_id="c1", editing=True, name=None, anchor=-1, head=2, heads=[HEAD])
    assert reg.viewers("nb")[0].anchor is None
    for heads in (["not hex"], [HEAD.upper()], [HEAD] * (MAX_HEADS + 1), []):
        reg.update(v, cell_id="c1", editing=True, name=None, anchor=1, head=2, heads=heads)
        assert reg.viewers("nb")[0].heads is None
        assert reg.viewers("nb")[0].head == 2  # the place itself is kept


def test_socket_clients_are_listed_without_a_place_and_wake_the_viewers() -> None:
    reg = PresenceRegistry()
    v = reg.join("nb")
    v.changed = type(v.changed)()  # as the page's pusher does after sending
    reg.set_clients("nb", 2)
    assert v.changed.is_set()
    kinds = [(i.kind, i.name, i.cell_id) for i in reg.viewers("nb")]
    assert kinds == [
        ("browser", "Viewer 1", None),
        ("client", "socket client", None),
        ("client", "socket client 2", None),
    ]
    reg.set_clients("other", 5)  # nobody views it in a browser: not tracked
    assert reg.viewers("other") == []
    reg.leave(v)
    assert reg.viewers("nb") == []
    assert reg.watched() == []
