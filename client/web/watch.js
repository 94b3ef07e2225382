// The watch page: a WHEP player of one room (/watch/{room}), with nothing but fetch and RTCPeerConnection.
// Protocol: docs/protocol.md, "WHEP". ?token=... when the server has a secret, ?tier=... for a picture size.

const $ = (id) => document.getElementById(id);
const room = decodeURIComponent(location.pathname.split("/").pop());
const params = new URLSearchParams(location.search);
const headers = params.get("token") ? { Authorization: `Bearer ${params.get("token")}` } : {};
const endpoint = `/whep/${encodeURIComponent(room)}` + (params.get("tier") ? `?tier=${encodeURIComponent(params.get("tier"))}` : "");
// How long to wait for the browser's candidates: the server takes them in the offer, not trickled.
const GATHER_MS = 3000;

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

async function watch() {
  $("room").textContent = room;
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
    if (pc.connectionState === "failed") say("The connection failed: reload the page to try again.");
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
    say(reason[response.status] ?? `The server refused: ${await response.text()}`);
    return;
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

watch().catch((error) => say(`Could not watch: ${error.message}`));
