"""The sfu mode: real aiortc peers through the real server, which forwards and never decodes or encodes."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import urllib.request
from typing import Any

import aiohttp
import pytest
from aiortc.jitterbuffer import JitterFrame
from conftest import BIN, free_port, start_mcu, stop_process
from media_checks import cell_colours, close_to, tone_levels

from client.peer import Peer, PeerError
from client.sources import COLORS, ColorTrack, ToneTrack, rgb_to_yuv
from mcu.media.tracks import QUEUE_LIMIT, PacketTrack
from mcu.rooms import sfu
from mcu.rooms.sfu import KEYFRAME_INTERVAL, SfuParticipant
from mcu.rtc.receiver import _EncodedHandoff
from signaling import grants, protocol, tokens

PEOPLE = [("alice", "red", 440.0), ("bob", "green", 660.0), ("carol", "blue", 880.0)]
ROOM = "forward"
SECRET = "test-secret-that-is-long-enough-for-hs256!"


def make_peer(server, name: str, colour: str, frequency: float, decode: bool = True) -> Peer:
    return Peer(
        server.url, ROOM, name, video=ColorTrack(COLORS[colour]), audio=ToneTrack(frequency), decode=decode, mode="sfu"
    )


async def close_all(peers: list[Peer]) -> None:
    await asyncio.gather(*(peer.close() for peer in peers), return_exceptions=True)


def centre(frame) -> tuple[int, int, int]:
    return cell_colours(frame, 1)[0]


def pictures_from(peer: Peer, others: list[Peer]) -> bool:
    """`peer` has a decoded picture from each of `others`."""
    return all(o.peer_id in peer.remote and peer.remote[o.peer_id].video_frame is not None for o in others)


async def test_three_peers_each_receive_the_other_two_as_tracks_of_their_own(server):
    peers = [make_peer(server, *person) for person in PEOPLE]
    try:
        for peer in peers:
            await peer.join()
        assert all(p.room_mode == "sfu" for p in peers)
        await peers[0].wait_for(lambda: all(pictures_from(p, [o for o in peers if o is not p]) for p in peers), 10)
        await asyncio.sleep(2)  # a whole second of steady audio from everybody
        frequencies = [f for _, _, f in PEOPLE]
        for peer in peers:
            assert peer.peer_id not in peer.remote, "a peer received its own track"
            assert peer.video_frame is None  # no composite either
            for other, (_, colour, frequency) in zip(peers, PEOPLE):
                if other is peer:
                    continue
                publisher = peer.remote[other.peer_id]
                assert close_to(centre(publisher.video_frame), rgb_to_yuv(COLORS[colour])), (peer.name, other.name)
                levels = tone_levels(publisher.audio(1.0), frequencies)
                # Each track carries its publisher's tone alone: no mix.
                assert levels[frequency] > 100, (peer.name, other.name, levels)
                assert min(levels[f] for f in frequencies if f != frequency) < levels[frequency] - 30, levels
            # Exactly two publishers, each one video and one audio track, mapped by the server's mids.
            assert sorted(peer.remote) == sorted(o.peer_id for o in peers if o is not peer)
            assert sorted(peer._sfu_tracks[mid].kind for mid in peer._sfu_received) == ["audio"] * 2 + ["video"] * 2
        # Chat goes through the server's peer connection as in an mcu room.
        await peers[0].chat("forwarded")
        await peers[2].wait_for(lambda: [m.text for m in peers[2].chat_messages] == ["forwarded"], 5)
    finally:
        await close_all(peers)


async def test_the_server_decodes_and_encodes_nothing_in_an_sfu_room(server):
    peers = [make_peer(server, *person) for person in PEOPLE]
    try:
        for peer in peers:
            await peer.join()
        await peers[0].wait_for(lambda: all(pictures_from(p, [o for o in peers if o is not p]) for p in peers), 10)
        room = server.conference.rooms[ROOM]
        stats = room.stats()
        # The media clocks never started: no composite, no mix, no encoder, no audio decode.
        assert room.video._task is None and not room.audio.running
        codec_work = (stats["videoFrames"], stats["audioTicks"], stats["audioDecodes"], stats["videoEncoders"])
        assert codec_work == (0, 0, 0, [])
        assert room.video.stats.encoders_created == 0
        receivers = senders = 0
        for participant in room.participants.values():
            assert isinstance(participant, SfuParticipant)
            for transceiver in participant.pc.getTransceivers():
                receiver, sender = transceiver.receiver, transceiver.sender
                if receiver.track is not None:
                    # Frames go to the forwarder: aiortc's decoder thread is handed nothing.
                    assert isinstance(receiver._RTCRtpReceiver__decoder_queue, _EncodedHandoff)
                    receivers += 1
                if transceiver.direction == "sendonly":
                    # Packets in, packets out: aiortc only encodes tracks that yield frames.
                    assert isinstance(sender.track, PacketTrack)
                    senders += 1
        assert (receivers, senders) == (6, 12)
        assert stats["mode"] == "sfu"
        # Each frame that comes in goes out once to each of the two other peers.
        await asyncio.sleep(1)
        later = room.stats()
        frames = later["forwardedFrames"] - stats["forwardedFrames"]
        assert later["forwardedPackets"] - stats["forwardedPackets"] == 2 * frames > 2 * 3 * (15 + 50) * 0.8
    finally:
        await close_all(peers)


async def test_late_joiner_gets_every_publisher_within_a_second_and_a_leaver_ends(server):
    early = [make_peer(server, *person) for person in PEOPLE[:2]]
    late = make_peer(server, *PEOPLE[2])
    try:
        for peer in early:
            await peer.join()
        await early[0].wait_for(lambda: all(pictures_from(p, [o for o in early if o is not p]) for p in early), 10)
        await asyncio.sleep(1.5)  # the publishers' last keyframes are old
        await late.join()
        await late.wait_for(lambda: pictures_from(late, early), 5)
        assert late.connected_time is not None
        first = max(late.remote[p.peer_id].first_frame_time for p in early)
        assert first - late.connected_time < 1.0
        # The others get the newcomer's tracks by renegotiation: a server offer, answered.
        await early[0].wait_for(lambda: all(pictures_from(p, [late]) for p in early), 5)
        assert all(any(e["type"] == "offer" for e in p.events) for p in early)
        colour = rgb_to_yuv(COLORS[PEOPLE[2][1]])
        assert all(close_to(centre(p.remote[late.peer_id].video_frame), colour) for p in early)

        # The late joiner leaves: its tracks end for the others (next offer), the others' go on.
        await late.close()
        await early[0].wait_for(lambda: all(p.remote[late.peer_id].ended for p in early), 5)
        frames = early[1].remote[early[0].peer_id].video_frames
        await early[1].wait_for(lambda: early[1].remote[early[0].peer_id].video_frames > frames + 5, 5)
        assert not early[1].remote[early[0].peer_id].ended
        room = server.conference.rooms[ROOM]
        assert all(late.peer_id not in publication.sinks for publication in room.forwarder.publications)
        assert {p.peer_id for p in room.forwarder.publications} == {p.peer_id for p in early}
    finally:
        await close_all(early + [late])


async def test_a_subscribers_pli_reaches_the_publisher_rate_limited(server):
    publisher = make_peer(server, *PEOPLE[0])
    subscriber = make_peer(server, *PEOPLE[1], decode=False)
    try:
        await publisher.join()
        await subscriber.join()
        await subscriber.wait_for(lambda: publisher.peer_id in subscriber.remote, 10)
        received = subscriber.remote[publisher.peer_id]
        await subscriber.wait_for(lambda: received.video_frames > 10, 10)
        # Count the keyframe requests that reach the publisher's encoder (aiortc's PLI handler).
        sender = next(t.sender for t in publisher.pc.getTransceivers() if t.kind == "video")
        requests: list[float] = []
        original = sender._send_keyframe

        def counted() -> None:
            requests.append(time.monotonic())
            original()

        sender._send_keyframe = counted
        transceiver = next(
            t
            for t in subscriber.pc.getTransceivers()
            if (entry := subscriber._sfu_tracks.get(t.mid or "")) is not None and entry.kind == "video"
        )
        ssrc = transceiver.receiver.getSynchronizationSources()[0].source
        await asyncio.sleep(KEYFRAME_INTERVAL)
        keyframes = received.keyframes
        await transceiver.receiver._send_rtcp_pli(ssrc)
        await subscriber.wait_for(lambda: received.keyframes > keyframes, 1)
        assert len(requests) == 1

        # A storm of 20 PLIs in 0.5 s reaches the publisher at most once per KEYFRAME_INTERVAL.
        await asyncio.sleep(KEYFRAME_INTERVAL)
        requests.clear()
        started = time.monotonic()
        for _ in range(20):
            await transceiver.receiver._send_rtcp_pli(ssrc)
            await asyncio.sleep(0.025)
        await asyncio.sleep(KEYFRAME_INTERVAL + 0.2)
        span = requests[-1] - started if requests else 0
        assert 1 <= len(requests) <= 1 + span / KEYFRAME_INTERVAL + 0.5, requests
        gaps = [b - a for a, b in zip(requests, requests[1:])]
        assert all(gap >= KEYFRAME_INTERVAL - 0.05 for gap in gaps), gaps
        stats = server.conference.rooms[ROOM].stats()
        assert stats["keyframeRequests"] >= 21 and stats["plisSent"] < stats["keyframeRequests"]
    finally:
        await close_all([publisher, subscriber])


class Raw:
    """A bare signaling connection: what it sends and the replies it reads."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(message))

    async def receive(self, kind: str) -> dict[str, Any]:
        """The next message of type `kind` (the room's own events are read past), within 5 s."""
        while True:
            message = json.loads((await asyncio.wait_for(self.ws.receive(), 5)).data)
            if message["type"] == kind:
                return message

    async def join(self, room: str, mode: str | None) -> dict[str, Any]:
        await self.send({"type": "join", "room": room, "name": "raw", **({"mode": mode} if mode else {})})
        return await self.receive("joined")


@pytest.mark.parametrize("mode", ["mcu", "sfu"])
async def test_mode_mismatch_and_unexpected_answer_leave_the_session_going(server, mode):
    async with aiohttp.ClientSession() as http:
        first, second = Raw(await http.ws_connect(server.url)), Raw(await http.ws_connect(server.url))
        assert (await first.join("modes", mode))["mode"] == mode
        other = "mesh" if mode == "sfu" else "sfu"
        await second.send({"type": "join", "room": "modes", "name": "raw", "mode": other})
        assert (await second.receive("error"))["code"] == protocol.MODE_MISMATCH
        # The session goes on: joining as the room is (or naming no mode) works.
        assert (await second.join("modes", None))["mode"] == mode
        # No offer of the server is pending (and an mcu room never sends one).
        await first.send({"type": "answer", "sdp": "v=0\r\n"})
        assert (await first.receive("error"))["code"] == protocol.UNEXPECTED_ANSWER
        # Nothing is composed in an sfu room: there is nothing to record.
        if mode == "sfu":
            await first.send({"type": "startRecording"})
            refused = await first.receive("error")
            assert refused["code"] == protocol.RECORDING_FAILED and "sfu" in refused["message"], refused
        await first.send({"type": "leave"})
        assert (await second.receive("participantLeft"))["peerId"]


async def test_an_sfu_room_takes_vp8_only(server):
    peer = Peer(server.url, ROOM, "h264", video=ColorTrack(COLORS["red"]), video_codec="h264", mode="sfu")
    try:
        with pytest.raises(PeerError):
            await peer.join(timeout=3)
        assert peer.errors[-1].code == protocol.INVALID_SDP
    finally:
        await peer.close()


async def test_the_server_default_mode_applies_to_a_join_that_names_none(server):
    server.conference.config.mode = "sfu"
    async with aiohttp.ClientSession() as http:
        raw = Raw(await http.ws_connect(server.url))
        assert (await raw.join("defaulted", None))["mode"] == "sfu"
        assert server.conference.rooms["defaulted"].forwarder is not None


async def test_a_broken_answer_or_a_crossing_offer_is_invalid_sdp_and_the_right_answer_works(server):
    first, second = make_peer(server, *PEOPLE[0]), make_peer(server, *PEOPLE[1])
    try:
        await first.join()
        answer_server = first._answer_server

        async def broken_then_right(message: dict[str, Any]) -> None:
            # The server handles a session's messages in order: the broken answer first,
            # then an offer of ours (our first one again) that crosses the server's.
            await first.send({"type": "answer", "sdp": "v=0\r\n"})
            await first.send({"type": "offer", "sdp": first.pc.localDescription.sdp})
            await answer_server(message)

        first._answer_server = broken_then_right
        await second.join()
        await first.wait_for(lambda: pictures_from(first, [second]), 10)
        assert [e.code for e in first.errors] == [protocol.INVALID_SDP] * 2
    finally:
        await close_all([first, second])


async def test_grants_a_viewer_is_forwarded_to_nobody_and_who_may_not_subscribe_gets_no_offer(server):
    server.conference.config.secret = SECRET

    def peer(name: str, colour: str, *granted: str) -> Peer:
        token = tokens.issue(SECRET, ROOM, name, 600, granted)
        return Peer(server.url, ROOM, name, video=ColorTrack(COLORS[colour]), token=token, mode="sfu")

    member = peer("member", "red", grants.PUBLISH, grants.SUBSCRIBE)
    viewer = peer("viewer", "green", grants.SUBSCRIBE)
    speaker = peer("speaker", "blue", grants.PUBLISH)
    try:
        for each in (member, viewer, speaker):
            await each.join()
        await viewer.wait_for(lambda: pictures_from(viewer, [member, speaker]) and pictures_from(member, [speaker]), 10)
        await asyncio.sleep(1)
        assert viewer.peer_id not in member.remote  # it sends, but nobody receives it
        assert not speaker.remote and not [e for e in speaker.events if e["type"] == "offer"]
    finally:
        await close_all([member, viewer, speaker])


async def test_changes_while_an_offer_is_in_flight_are_folded_into_the_next(server):
    watcher = make_peer(server, "watcher", "yellow", 1200.0)
    publishers = [make_peer(server, *person) for person in PEOPLE[:2]]
    try:
        await watcher.join()
        room = server.conference.rooms[ROOM]
        offers: list[dict[str, Any]] = []
        send = room.participants[watcher.peer_id]._send

        def sent(message: dict[str, Any]) -> None:
            if message["type"] == "offer":
                offers.append(message)
            send(message)

        room.participants[watcher.peer_id]._send = sent
        release = asyncio.Event()
        answer_server = watcher._answer_server

        async def held(message: dict[str, Any]) -> None:
            await release.wait()
            await answer_server(message)

        watcher._answer_server = held
        await publishers[0].join()
        await watcher.wait_for(lambda: len(offers) == 1, 5)
        await publishers[1].join()
        await watcher.wait_for(lambda: len(room.forwarder.publications) == 6, 5)
        await asyncio.sleep(0.3)
        assert len(offers) == 1  # the first is unanswered: nothing more is offered meanwhile
        release.set()
        await watcher.wait_for(lambda: pictures_from(watcher, publishers), 10)
        # The second publisher's tracks came in one offer after the answer, with the full map.
        assert [sorted((t["peerId"], t["kind"]) for t in offer["tracks"]) for offer in offers] == [
            sorted((publishers[0].peer_id, kind) for kind in ("audio", "video")),
            sorted((p.peer_id, kind) for p in publishers for kind in ("audio", "video")),
        ]
    finally:
        await close_all([watcher, *publishers])


def room_peers(port: int, room: str) -> list:
    """The participants of `room` as the HTTP API lists them (none while it does not exist)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/rooms/{room}", timeout=2) as reply:
            return json.load(reply)["participants"]
    except OSError:
        return []


def test_mcu_serve_mode_sfu_and_mcu_client_join():
    """`mcu serve --mode sfu` makes rooms forward; `mcu-client join`, with `--mode sfu` or none, receives the other."""
    port = free_port()
    server = start_mcu(port, "--mode", "sfu")
    url = f"ws://127.0.0.1:{port}/ws"
    try:
        clients = []
        # The first stays until well after the second (which may take seconds to start) has left.
        options = (["--mode", "sfu", "--duration", "12"], ["--duration", "5"])
        for (name, colour, frequency), extra in zip(PEOPLE[:2], options):
            clients.append(
                subprocess.Popen(
                    [
                        BIN / "mcu-client",
                        "join",
                        url,
                        "--room",
                        "cli",
                        "--name",
                        name,
                        "--video",
                        f"color:{colour}",
                        "--audio",
                        f"tone:{frequency:g}",
                        *extra,
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
            deadline = time.monotonic() + 15
            while len(room_peers(port, "cli")) < len(clients) and time.monotonic() < deadline:
                time.sleep(0.2)
        outputs = [c.communicate(timeout=30)[0] for c in clients]
        assert [c.returncode for c in clients] == [0, 0], outputs
        for output in outputs:
            assert "joined room cli (sfu mode)" in output, output
            assert "received 0 video frames" in output, output  # no composite
            counts = re.findall(r"^from \w+: (\d+) video frames, (\d+) audio frames$", output, re.MULTILINE)
            assert len(counts) == 1 and int(counts[0][0]) > 20 and int(counts[0][1]) > 100, output
    finally:
        stop_process(server, grace=10)


async def test_a_leavers_sections_carry_the_next_publisher_so_churn_does_not_grow_the_sdp(server):
    watcher = make_peer(server, "watcher", "yellow", 1200.0)
    try:
        await watcher.join()
        sections: list[int] = []
        mids: list[set[str]] = []
        for round, (name, colour, frequency) in enumerate(PEOPLE * 2):
            publisher = make_peer(server, f"{name}{round}", colour, frequency)
            await publisher.join()
            try:
                await watcher.wait_for(lambda: pictures_from(watcher, [publisher]), 10)
                # The picture under this publisher's name is its own (a reused section shows no one else's).
                expected = rgb_to_yuv(COLORS[colour])
                await watcher.wait_for(
                    lambda: close_to(centre(watcher.remote[publisher.peer_id].video_frame), expected), 5
                )
                sections.append(len(watcher.pc.getTransceivers()))
                mids.append({mid for mid, (owner, _) in watcher._sfu_received.items() if owner == publisher.peer_id})
            finally:
                await publisher.close()
            await watcher.wait_for(lambda: watcher.remote[publisher.peer_id].ended, 5)
        # Two sections of its own (sending) and two that each publisher in turn used.
        assert sections == [4] * 6, sections
        assert all(m == mids[0] and len(m) == 2 for m in mids), mids
        server_side = server.conference.rooms[ROOM].participants[watcher.peer_id].pc
        assert len(server_side.getTransceivers()) == 4
    finally:
        await watcher.close()


async def test_a_moderator_mute_stops_forwarding_that_voice(server):
    speaker, listener = make_peer(server, *PEOPLE[0]), make_peer(server, *PEOPLE[1])
    try:
        await speaker.join()
        await listener.join()
        await listener.wait_for(lambda: speaker.peer_id in listener.remote, 10)
        heard = listener.remote[speaker.peer_id]
        await listener.wait_for(lambda: heard.audio_frames > 25, 10)

        async def frames_in(seconds: float) -> int:
            before = heard.audio_frames
            await asyncio.sleep(seconds)
            return heard.audio_frames - before

        await listener.send({"type": "moderateAudio", "peerId": speaker.peer_id, "muted": True})
        await asyncio.sleep(0.5)  # what was on its way
        assert await frames_in(1.0) == 0
        assert heard.video_frames > 0 and not heard.ended
        await listener.send({"type": "moderateAudio", "peerId": speaker.peer_id, "muted": False})
        await asyncio.sleep(0.5)
        assert await frames_in(1.0) > 25
    finally:
        await close_all([speaker, listener])


async def test_a_subscriber_that_falls_behind_loses_its_backlog_and_resumes_on_a_keyframe(monkeypatch):
    """Forwarding logic alone (no peers): the PLI that would go upstream is recorded instead."""
    plis: list[float] = []
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(sfu, "send_pli", lambda receiver: plis.append(loop.time()) or True)
    stats = sfu.ForwardStats()
    publication = sfu.Publication("publisher", "video", None, stats)
    track = PacketTrack("video")
    publication.subscribe("subscriber", track)
    assert len(plis) == 1  # a new subscriber asks for a keyframe
    key, delta = b"\x10\x02\x00\x9d\x01\x2a", b"\x11\x02\x00"

    def frame(data: bytes, index: int) -> JitterFrame:
        return JitterFrame(data=data, timestamp=index * 6000)

    publication.forward(frame(delta, 0))  # before any keyframe: useless, dropped
    for index in range(1, 1 + QUEUE_LIMIT):  # a keyframe, then deltas that nobody sends on
        publication.forward(frame(key if index == 1 else delta, index))
    assert track._queue.qsize() == QUEUE_LIMIT
    publication.forward(frame(delta, 99))  # one too many: the backlog goes, a keyframe is asked for
    assert track._queue.qsize() == 0 and track.dropped == 1 + QUEUE_LIMIT
    publication.forward(frame(delta, 100))
    assert track._queue.qsize() == 0  # deltas wait for the keyframe
    await asyncio.sleep(sfu.KEYFRAME_INTERVAL + 0.1)
    assert len(plis) == 2 and plis[1] - plis[0] >= sfu.KEYFRAME_INTERVAL - 0.01  # rate-limited, not lost
    publication.forward(frame(key, 101))
    packet = await asyncio.wait_for(track.recv(), 1)
    assert packet.is_keyframe and packet.pts == 101 * 6000 and packet.time_base == sfu.TIME_BASES["video"]
    # Asked at subscription, by the delta before any keyframe, at the overflow and by the delta after it:
    # four requests, two PLIs (the last three folded into one after the interval).
    assert stats.keyframe_requests == 4 and stats.plis == 2


async def test_a_subscriber_waiting_for_a_keyframe_asks_again_until_one_comes(monkeypatch):
    """A PLI may be lost (RTCP over UDP) or ignored by a browser: the deltas that keep coming ask again."""
    plis: list[float] = []
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(sfu, "send_pli", lambda receiver: plis.append(loop.time()) or True)
    publication = sfu.Publication("publisher", "video", None, sfu.ForwardStats())
    track = PacketTrack("video")
    publication.subscribe("subscriber", track)  # its PLI is lost: no keyframe comes
    for index in range(12):  # 1.2 s of deltas
        publication.forward(JitterFrame(data=b"\x11\x02\x00", timestamp=index * 9000))
        await asyncio.sleep(0.1)
    assert len(plis) >= 3, plis
    assert all(b - a >= sfu.KEYFRAME_INTERVAL - 0.01 for a, b in zip(plis, plis[1:])), plis  # still rate-limited
    assert track._queue.qsize() == 0 and track.dropped == 12
