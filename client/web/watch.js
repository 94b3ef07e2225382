// The watch page: a WHEP player of one room (/watch/{room}), with nothing but fetch and RTCPeerConnection.
// Protocol: docs/protocol.md, "WHEP". ?token=... when the server has a secret, ?tier=... for a picture size.
// Where WebRTC is not possible (no RTCPeerConnection, the server cannot take a viewer, the connection
// fails) it plays the room's HLS instead, when the server writes it (mcu serve --hls); ?hls=1 asks for it.

const $ = (id) => document.getElementById(id);
const room = decodeURIComponent(location.pathname.split("/").pop());
const params = new URLSearchParams(location.search);
const headers = params.get("token") ? { Authorization: `Bearer ${params.get("token")}` } : {};
const endpoint = `/whep/${encodeURIComponent(room)}` + (params.get("tier") ? `?tier=${encodeURIComponent(params.get("tier"))}` : "");
// How long to wait for the browser's candidates: the server takes them in the offer, not trickled.
const GATHER_MS = 3000;
// The room's live HLS (docs/operations.md, "Broadcasting"): 4-8 s behind the room, but any player takes it.
const HLS = `/hls/${encodeURIComponent(room)}/index.m3u8`;
const HLS_WAIT_SECONDS = 10;

function say(text) {
  $("status").textContent = text;
}

/** Resolves once the browser has gathered its candidates (or after GATHER_MS, with those it has). */
function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, GATHER_MS);
  });
}

/** Whether the room's HLS is there, looking every second for up to `seconds` (a room starting writes it
 * once every tier lists three segments: about 6 s). */
async function hlsThere(seconds) {
  for (let tries = 0; tries <= seconds; tries++) {
    const playlist = await fetch(HLS, { cache: "no-store" }).catch(() => null);
    if (playlist?.ok) return true;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  return false;
}

/** Play the room's HLS: in the video element where the browser plays HLS, else as a link for a player. */
async function fallBack(why) {
  const video = $("remote");
  say(`${why} Looking for the room's HLS stream…`);
  if (!(await hlsThere(HLS_WAIT_SECONDS))) {
    say(`${why} The room has no HLS stream either.`);
    return;
  }
  if (video.canPlayType("application/vnd.apple.mpegurl")) {
    video.srcObject = null;
    video.src = HLS;
    video.play().catch(() => {});
    say(`Watching ${room} over HLS, a few seconds behind (${why})`);
  } else {
    const link = document.createElement("a");
    link.href = HLS;
    link.textContent = new URL(HLS, location.href).href;
    say(`${why} Open the room's HLS stream in a player: `);
    $("status").append(link);
  }
}

async function watch() {
  $("room").textContent = room;
  if (params.get("hls")) return fallBack("as asked.");
  if (typeof RTCPeerConnection === "undefined") return fallBack("This browser has no WebRTC.");
  const pc = new RTCPeerConnection();
  const stream = new MediaStream();
  pc.addTransceiver("audio", { direction: "recvonly" });
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.ontrack = (event) => {
    stream.addTrack(event.track);
    // Given its stream once there is a track: an empty one would hold the page's load event.
    $("remote").srcObject ??= stream;
  };
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === "connected") say(`Watching ${room}`);
    if (pc.connectionState === "failed") {
      pc.close();
      fallBack("The WebRTC connection failed.");
    }
  };
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const response = await fetch(endpoint, {
    method: "POST",
    headers: { ...headers, "Content-Type": "application/sdp" },
    body: pc.localDescription.sdp,
  });
  if (response.status !== 201) {
    pc.close();
    const reason = { 401: "You are not allowed to watch this room.", 403: "Your invitation does not let you watch.", 404: "There is no such room (yet)." };
    if (reason[response.status]) return say(reason[response.status]);
    // Full of viewers, or a room without a composite over WebRTC (503, 409...): HLS may still carry it.
    return fallBack(`The server could not take a WebRTC viewer: ${await response.text()}`);
  }
  const resource = new URL(response.headers.get("Location"), location.href);
  await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
  // Leaving the page ends the session on the server at once (not when ICE times out).
  addEventListener("pagehide", () => {
    fetch(resource, { method: "DELETE", headers, keepalive: true });
    pc.close();
  });
}

$("unmute").addEventListener("click", () => {
  $("remote").muted = false;
  $("unmute").hidden = true;
});

watch().catch((error) => fallBack(`Could not watch over WebRTC: ${error.message}.`));
