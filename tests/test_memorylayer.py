"""heartbeat_app.memorylayer.InMemoryChannelLayer: Channels' in-memory layer as its users
see it, with one copy per group send and expiry looked for once in CLEAN_EVERY."""

import asyncio

import pytest
from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer as ChannelsLayer

from heartbeat_app import memorylayer
from heartbeat_app.memorylayer import InMemoryChannelLayer


@pytest.fixture(params=["ours", "channels"])
def layer(request):
    """Both layers, so every behaviour below is Channels' own too."""
    return InMemoryChannelLayer(capacity=3) if request.param == "ours" else ChannelsLayer(
        capacity=3)


async def test_send_receive_and_groups_behave_as_channels_layer(layer):
    a, b = await layer.new_channel(), await layer.new_channel()
    await layer.send(a, {"type": "x.one", "n": 1})
    assert await layer.receive(a) == {"type": "x.one", "n": 1}
    await layer.group_add("room", a)
    await layer.group_add("room", b)
    await layer.group_send("room", {"type": "x.two", "members": [{"k": 1}]})
    assert await layer.receive(a) == await layer.receive(b) == {
        "type": "x.two", "members": [{"k": 1}]}
    await layer.group_discard("room", b)
    await layer.group_send("room", {"type": "x.three"})
    assert await layer.receive(a) == {"type": "x.three"}
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(layer.receive(b), 0.05)
    await layer.group_send("nobody", {"type": "x.four"})  # a group with no members


async def test_a_full_channel_raises_on_send_and_misses_a_group_send(layer):
    full, other = await layer.new_channel(), await layer.new_channel()
    for n in range(3):
        await layer.send(full, {"type": "x", "n": n})
    with pytest.raises(ChannelFull):
        await layer.send(full, {"type": "x", "n": 3})
    for channel in (full, other):
        await layer.group_add("room", channel)
    await layer.group_send("room", {"type": "x", "n": "group"})
    assert [(await layer.receive(full))["n"] for _ in range(3)] == [0, 1, 2]
    assert (await layer.receive(other))["n"] == "group"


async def test_members_get_the_message_as_sent_each_its_own_top_level(layer):
    a, b = await layer.new_channel(), await layer.new_channel()
    for channel in (a, b):
        await layer.group_add("room", channel)
    sent = {"type": "x", "joins": {"k1": {"visible": True}}}
    await layer.group_send("room", sent)
    sent["joins"]["k1"]["visible"] = False  # the sender's own dict, changed after the send
    sent["type"] = "changed"
    first = await layer.receive(a)
    first.pop("type")  # a handler may change the message's own keys
    second = await layer.receive(b)
    assert second == {"type": "x", "joins": {"k1": {"visible": True}}}


async def test_expired_messages_are_dropped_and_their_channel_leaves_its_groups(
        layer, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("channels.layers.time.time", lambda: clock[0])
    monkeypatch.setattr(memorylayer.time, "time", lambda: clock[0])
    monkeypatch.setattr(memorylayer.time, "monotonic", lambda: clock[0])
    gone, live = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("room", gone)
    await layer.send(gone, {"type": "x.old"})
    clock[0] += layer.expiry + memorylayer.CLEAN_EVERY
    await layer.group_add("room", live)
    await layer.group_send("room", {"type": "x.new"})
    assert await layer.receive(live) == {"type": "x.new"}
    assert gone not in layer.groups.get("room", {}), "its message expired: out of the group"


async def test_a_group_send_copies_its_message_once_whatever_the_members(monkeypatch):
    layer = InMemoryChannelLayer()
    copies = []
    real = memorylayer.deepcopy
    monkeypatch.setattr(memorylayer, "deepcopy", lambda m: copies.append(m) or real(m))
    channels = [await layer.new_channel() for _ in range(100)]
    for channel in channels:
        await layer.group_add("room", channel)
    await layer.group_send("room", {"type": "x", "joins": {f"k{n}": {} for n in range(50)}})
    assert len(copies) == 1
    assert [(await layer.receive(c))["type"] for c in channels] == ["x"] * 100


async def test_expiry_is_looked_for_once_in_clean_every_not_at_every_message(monkeypatch):
    layer = InMemoryChannelLayer()
    walks = []
    monkeypatch.setattr(ChannelsLayer, "_clean_expired", lambda self: walks.append(1))
    channels = [await layer.new_channel() for _ in range(200)]
    for channel in channels:
        await layer.group_add("room", channel)
    for _ in range(10):
        await layer.group_send("room", {"type": "x"})
        for channel in channels:
            await layer.receive(channel)
    assert len(walks) == 1, "2,010 sends and receives within a second: one pass"
