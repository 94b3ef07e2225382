"""A WHIP publisher that is not ours: GStreamer's webrtcbin (libnice, its own DTLS and RTP), driven as
simple-whip-client drives it. Run by Debian's Python (python3-gi), not the project's: tests/test_whip.py.

    /usr/bin/python3 tests/gst_whip.py ENDPOINT SECONDS vp8|h264 RRGGBB FREQUENCY

Publishes a picture of the solid colour RRGGBB and a tone of FREQUENCY Hz for SECONDS, then DELETEs
its resource. Prints
"published <Location>" once answered, "refused <status> <body>" if not, and exits 0 only if published.
"""

import sys
import urllib.error
import urllib.parse
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

VIDEO = {
    "vp8": "vp8enc deadline=1 keyframe-max-dist=30 ! rtpvp8pay pt=96"
    " ! application/x-rtp,media=video,encoding-name=VP8,payload=96",
    "h264": "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! video/x-h264,profile=constrained-baseline"
    " ! rtph264pay config-interval=-1 pt=102 aggregate-mode=zero-latency"
    " ! application/x-rtp,media=video,encoding-name=H264,payload=102",
}


def main(endpoint: str, seconds: float, codec: str, colour: str, frequency: float) -> int:
    Gst.init(None)
    pipeline = Gst.parse_launch(
        "webrtcbin name=send bundle-policy=max-bundle "
        f"videotestsrc is-live=true pattern=solid-color foreground-color=0xff{colour}"
        " ! video/x-raw,width=320,height=240,framerate=15/1 ! videoconvert ! queue ! "
        f"{VIDEO[codec]} ! send. "
        f"audiotestsrc is-live=true wave=sine freq={frequency} volume=0.3 ! audioconvert ! audioresample ! queue"
        " ! opusenc ! rtpopuspay pt=111 ! application/x-rtp,media=audio,encoding-name=OPUS,payload=111 ! send."
    )
    webrtc = pipeline.get_by_name("send")
    # libnice never gathers a loopback address by itself: the test's namespace has no other.
    agent = webrtc.get_property("ice-agent")  # held while the pipeline runs
    agent.emit("add-local-ip-address", "127.0.0.1")
    loop = GLib.MainLoop()
    state = {"location": None, "status": 1, "offered": False}

    def post(offer_sdp: str) -> None:
        request = urllib.request.Request(
            endpoint, data=offer_sdp.encode(), headers={"Content-Type": "application/sdp"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                answer, location = response.read().decode(), response.headers["Location"]
        except urllib.error.HTTPError as exc:
            print("refused", exc.code, exc.read().decode()[:300], flush=True)
            loop.quit()
            return
        state["location"] = urllib.parse.urljoin(endpoint, location)
        _, message = GstSdp.SDPMessage.new_from_text(answer)
        description = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, message)
        webrtc.emit("set-remote-description", description, Gst.Promise.new())
        print("published", state["location"], flush=True)
        state["status"] = 0
        GLib.timeout_add(int(seconds * 1000), loop.quit)

    def on_gathering(element, _param) -> None:
        complete = element.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE
        if complete and not state["offered"]:  # one POST, every candidate in it (no trickle)
            state["offered"] = True
            offer = element.get_property("local-description").sdp.as_text()
            GLib.idle_add(lambda: post(offer) and False)

    def on_offer(promise: Gst.Promise) -> None:
        reply = promise.get_reply()
        offer = reply.get_value("offer")
        if offer is None:
            print("no offer:", reply.to_string(), flush=True)
            loop.quit()
            return
        webrtc.emit("set-local-description", offer, Gst.Promise.new())

    def on_negotiation_needed(element) -> None:
        index = 0
        while (transceiver := element.emit("get-transceiver", index)) is not None:
            transceiver.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
            index += 1
        element.emit("create-offer", None, Gst.Promise.new_with_change_func(on_offer))

    webrtc.connect("on-negotiation-needed", on_negotiation_needed)
    webrtc.connect("notify::ice-gathering-state", on_gathering)
    pipeline.set_state(Gst.State.PLAYING)
    GLib.timeout_add(int((seconds + 20) * 1000), loop.quit)  # never hang a test
    loop.run()
    if state["location"] is not None:
        try:
            urllib.request.urlopen(urllib.request.Request(state["location"], method="DELETE"), timeout=5).close()
        except urllib.error.URLError:
            pass
    pipeline.set_state(Gst.State.NULL)
    return state["status"]


if __name__ == "__main__":
    endpoint, seconds, codec, colour, frequency = sys.argv[1:]
    sys.exit(main(endpoint, float(seconds), codec, colour, float(frequency)))
