"""Adaptation end to end, behind a real bottleneck (tc tbf, tests/bottleneck_room.py), where
tests/test_bottleneck.py does not go: an H.264 receiver moved between tiers, and a receiver moved
down to audio only and back.

- H.264: the server offers VP8 and H.264; a receiver that offers only H.264 gets the room's H.264
  encoders. Moved down (700 kbit/s) and back up (the bottleneck lifted), each time its first frame
  on the new tier is that tier's H.264 IDR with its SPS and PPS, the switch asks a keyframe of that
  H.264 encoder only (not of the VP8 encoder the other peer receives), and it decodes every frame.
- Audio only: at 100 kbit/s no video tier fits (`small` is 150 kbit/s, the mix 32 kbit/s of Opus
  in 50 packets a second with their headers); the receiver is told `audio`, no video is sent to it, its mix goes on at
  50 packets a second with none lost (a probe for `small` meanwhile fails, and only delays the mix
  by the queue its burst makes), and once the bottleneck lifts it is back on video and decodes
  pictures again. At 80 kbit/s under a 16 kB bucket the mix alone kept the tbf's queue (1.8 s)
  standing: a probe into it tail-dropped the mix (22 packets in one second; docs/protocol.md).
"""

from __future__ import annotations

import asyncio
import time

from bottleneck_room import at, bottleneck_server, poll, record_keyframes, record_switches, slow_peer

from client.encoded import PreEncodedAudioTrack, PreEncodedVideoTrack
from client.peer import Peer
from mcu.config import Config
from mcu.media.encoders import Output
from mcu.media.tracks import PacketTrack
from mcu.rooms.adaptation import AUDIO_ONLY
from mcu.rtc.sender import DirectSender

#: The H.264 NAL unit types of a keyframe that a decoder can start on (an IDR slice, its SPS and PPS).
IDR, SPS, PPS = 5, 7, 8
#: Tier sizes of the default configuration.
SIZES = {"high": [1280, 720], "low": [640, 360], "small": [320, 180]}
#: The issue's bounds: down within DOWN_SECONDS of the bottleneck, back UP_SECONDS after it lifts.
DOWN_SECONDS = 5.0
UP_SECONDS = 30.0
MIN_FPS = 12.0
#: The bucket of the audio-only receiver's link: 0.3 s at its rate, as 16 kB is 0.2 s at 700 kbit/s. A probe
#: smaller than the bucket passes unseen: the 16 kB one refilled in 4 s over the mix, the probe for `small`
#: (4.7 kB of padding) passed, and the peer was moved up to a tier its link could not carry.
AUDIO_BURST = "4kb"
#: How long the audio-only receiver's link stays limited once the video's queue drained: long enough for
#: a probe (6 s after the switch, 4-8 s after a failed one).
AUDIO_SECONDS = 14.0
#: The mix's packets a second (20 ms frames); in any second on audio only at least MIN_AUDIO_PER_SECOND:
#: a failed probe's burst holds the mix back for the queue it makes (0.096-0.125 s measured), none is lost.
AUDIO_RATE = 50
MIN_AUDIO_PER_SECOND = 40


def nal_types(data: bytes) -> set[int]:
    """The NAL unit types of an Annex B access unit."""
    return {unit[0] & 0x1F for unit in data.split(b"\x00\x00\x01")[1:] if unit}


def record_sent(track: PacketTrack) -> list[tuple[float, Output | None, bool, set[int], int]]:
    """From now on, each frame the peer's sender sends: when, of which output, its keyframe flag,
    NAL unit types and size."""
    direct = track.direct
    assert isinstance(direct, DirectSender)
    sent: list[tuple[float, Output | None, bool, set[int], int]] = []
    push = direct.push

    def recorded(packet) -> None:
        data = bytes(packet)
        sent.append((time.monotonic(), track.output, packet.is_keyframe, nal_types(data), len(data)))
        push(packet)

    direct.push = recorded  # type: ignore[method-assign]
    return sent


def first_of(sent: list, output: Output, since: float) -> tuple | None:
    return next((frame for frame in sent if frame[0] >= since and frame[1] == output), None)


async def good_peer(url: str, tier: str) -> Peer:
    peer = Peer(url, "narrow", "good", video=PreEncodedVideoTrack((60, 200, 60)), audio=PreEncodedAudioTrack(300.0),
                decode=False, chat=False, tier=tier)  # fmt: skip
    await peer.join()
    return peer


async def test_an_h264_receiver_switches_tiers_on_its_own_encoders_keyframes(tmp_path):
    async with bottleneck_server("mcuh", Config()) as server:
        good = await good_peer(server.url, "high")
        try:
            async with slow_peer(server, "narrow", "slow", tmp_path / "slow.log", "--codec", "h264") as slow:
                assert await poll(lambda: slow.size() == SIZES["high"], 40), slow.describe()
                room = server.room("narrow")
                participant = server.participant("narrow", "slow")
                assert participant is not None and participant.video_out.output == Output("h264", "high")
                await asyncio.sleep(2)  # the joins' keyframes are behind us
                keyframes = record_keyframes(room)
                switches = record_switches(room)
                sent = record_sent(participant.video_out)

                start = time.monotonic()
                server.veth.limit("700kbit")
                down = await poll(lambda: participant.tier != "high", DOWN_SECONDS + 5)
                assert down is not None, slow.describe()
                lower = participant.tier
                landed = await poll(lambda: slow.size() not in (None, SIZES["high"]), 10)
                # What was sent since the move (output, keyframe, NAL types, size) tells why it did not land.
                assert landed is not None, (switches, [f[1:] for f in sent if f[0] > down], slow.describe())
                await asyncio.sleep(max(landed + 6 - time.monotonic(), 0))  # decoding on the lower tier
                lift = time.monotonic()
                qdisc = server.veth.qdisc_stats()
                server.veth.unlimit()
                up = await poll(lambda: participant.tier == "high", UP_SECONDS + 5)
                back = None if up is None else await poll(lambda: slow.size() == SIZES["high"], 5)
                await asyncio.sleep(2)
                end = time.monotonic()

            # When each move was made (the poll above sees it up to 0.1 s later), and its first frame sent.
            moved_down = next(t for t, _, s in switches if s.tier == lower)
            moved_up = next((t for t, _, s in switches if s.tier == "high"), None)
            on_lower = first_of(sent, Output("h264", lower), moved_down)
            on_high = None if moved_up is None else first_of(sent, Output("h264", "high"), moved_up)

            # What the switches asked for, from each move (asked just before it is announced) to its first
            # frame on the new tier. The receiver's own PLI on the tier it leaves, just before the move, is
            # not the move's: it lost packets on that tier (a full suite's run once counted one in that slack).
            def asked(moved: float, first: tuple | None, leaving: Output) -> set[Output]:
                if first is None:
                    return set()
                return {o for t, o in keyframes if moved - 0.05 <= t <= first[0] and (t >= moved or o != leaving)}

            asked_down = asked(moved_down, on_lower, Output("h264", "high"))
            asked_up = set() if moved_up is None else asked(moved_up, on_high, Output("h264", lower))
            vp8_asked = [(round(t - start, 2), str(o)) for t, o in keyframes if o.codec == "vp8"]
            first, last = at(slow.lines, landed), at(slow.lines, end)
            fps = (at(slow.lines, lift)["frames"] - first["frames"]) / (lift - first["t"])
            print(
                f"\nh264 at 700kbit: down to {lower} {down - start:.1f} s after the bottleneck, on screen after "
                f"{landed - start:.1f} s, {fps:.1f} fps; back on high "
                + ("never" if up is None else f"{up - lift:.1f} s after the lift")
                + ("" if back is None else f", on screen after {back - lift:.1f} s")
                + f"; decode errors from landing to the end {last['errors'] - first['errors']}; keyframes asked "
                f"down {sorted(map(str, asked_down))}, up {sorted(map(str, asked_up))}, of VP8 {vp8_asked}; "
                f"first frames: {on_lower and on_lower[2:]}, {on_high and on_high[2:]}\n"
                f"switches: {[(round(t - start, 1), s) for t, _, s in switches]}\n{qdisc}"
            )
            assert down - start <= DOWN_SECONDS and lower != AUDIO_ONLY, switches
            assert on_lower is not None and on_lower[2] and {IDR, SPS, PPS} <= on_lower[3], on_lower
            assert asked_down == {Output("h264", lower)}, asked_down
            assert fps >= MIN_FPS, fps
            assert up is not None and up - lift <= UP_SECONDS and back is not None, switches
            assert on_high is not None and on_high[2] and {IDR, SPS, PPS} <= on_high[3], on_high
            assert asked_up == {Output("h264", "high")}, asked_up
            assert not vp8_asked
            assert last["errors"] == first["errors"] and last["frames"] - first["frames"] > 15 * (end - landed)
            assert [line["tier"] for line in slow.lines if line["t"] > start][-1] == "high"
            assert any(line["tier"] == lower for line in slow.lines)
            assert good.video_frames > 0 and not good.errors
        finally:
            await good.close()


async def test_a_receiver_that_cannot_carry_any_video_keeps_its_mix_and_comes_back(tmp_path):
    async with bottleneck_server("mcua", Config()) as server:
        good = await good_peer(server.url, "low")
        try:
            async with slow_peer(server, "narrow", "slow", tmp_path / "slow.log", "--tier", "low") as slow:
                assert await poll(lambda: slow.size() == SIZES["low"], 40), slow.describe()
                room = server.room("narrow")
                participant = server.participant("narrow", "slow")
                assert participant is not None and participant.controller is not None
                direct = participant.video_out.direct
                assert isinstance(direct, DirectSender)
                await asyncio.sleep(2)
                switches = record_switches(room)

                start = time.monotonic()
                server.veth.limit("100kbit", burst=AUDIO_BURST, latency="400ms")
                audio = await poll(lambda: participant.tier == AUDIO_ONLY, DOWN_SECONDS + 5)
                assert audio is not None, (switches, slow.describe())
                # The queue the video left drains, then: audio only until the lift, probes included.
                await asyncio.sleep(1.5)
                quiet, packets = time.monotonic(), direct.packets
                await asyncio.sleep(AUDIO_SECONDS)
                lift = time.monotonic()
                packets = direct.packets - packets
                controller = participant.controller
                probes, failed, queue = controller.probes, controller.probes_failed, controller.probe_queue
                qdisc = server.veth.qdisc_stats()
                server.veth.unlimit()
                up = await poll(lambda: participant.tier != AUDIO_ONLY, UP_SECONDS + 5)
                landed = None if up is None else await poll(lambda: at(slow.lines, time.monotonic())["frames"]
                                                            > at(slow.lines, up)["frames"] + 15, 10)  # fmt: skip
                end = time.monotonic()

            window = [line for line in slow.lines if quiet <= line["t"] <= lift]
            frames = window[-1]["frames"] - window[0]["frames"]
            rate = (window[-1]["audio"] - window[0]["audio"]) / (window[-1]["t"] - window[0]["t"])
            lost = window[-1]["audioLost"] - window[0]["audioLost"]
            # The fewest packets of the mix in any second of it (samples every 0.25 s).
            per_second = min(
                later["audio"] - line["audio"]
                for line in window
                for later in [next((x for x in window if x["t"] >= line["t"] + 1), None)]
                if later is not None
            )
            tiers = [line["tier"] for line in slow.lines]
            after = at(slow.lines, end)
            print(
                f"\n100kbit: audio only {audio - start:.1f} s after the bottleneck; then over "
                f"{lift - quiet:.1f} s: {packets} video packets sent, {frames} pictures decoded, the mix "
                f"{rate:.1f} packets/s, at least {per_second} in any second, {lost} lost; {probes} probes, "
                f"{failed} failed "
                f"(the last one's queue {queue and round(queue, 3)} s); back on "
                + ("nothing" if up is None else f"{participant.tier} {up - lift:.1f} s after the lift")
                + ("" if landed is None else f", pictures again after {landed - lift:.1f} s")
                + f" ({after['size']}, {after['errors']} decode errors in all)\n"
                f"switches: {[(round(t - start, 1), s) for t, _, s in switches]}\n{qdisc}"
            )
            assert audio - start <= DOWN_SECONDS
            assert AUDIO_ONLY in tiers
            assert [s.tier for t, _, s in switches if quiet <= t <= lift] == []
            assert packets == 0 and frames == 0
            assert rate >= 0.95 * AUDIO_RATE and per_second >= MIN_AUDIO_PER_SECOND and lost == 0, (rate, per_second)
            assert failed >= 1  # probed meanwhile, and the probe saw the bottleneck
            assert up is not None and up - lift <= UP_SECONDS, switches
            assert landed is not None and tiers[-1] != AUDIO_ONLY
            assert after["size"] in SIZES.values()
            assert good.video_frames > 0 and not good.errors
        finally:
            await good.close()
