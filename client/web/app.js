// The meeting page: one WebSocket for signaling, one peer connection for media and chat.
// Protocol: docs/protocol.md. Plain modules, no build step.

import { installControls, showLayout, showRecordingControl, showRoomControls } from "./controls.js";
import { installDevicePickers, listDevices } from "./devices.js";
import { renderParticipantList } from "./participants.js";
import { watchLinks } from "./quality.js";
import { ScreenShare } from "./share.js";

const $ = (id) => document.getElementById(id);

/** The "recording" indicator: shown while the room is being recorded (recording: {file, startedAt} or null). */
function showRecording(recording) {
  const indicator = $("recording");
  indicator.hidden = !recording;
  indicator.title = recording ? `Recording to ${recording.file} since ${new Date(recording.startedAt).toLocaleTimeString()}` : "";
}

// Errors after which reconnecting cannot help: the page stops and says why.
const FATAL = new Set([
  "invalid_room", "invalid_name", "invalid_message", "unknown_type", "unauthorized",
  "forbidden", "room_full", "too_many_rooms", "unknown_tier", "unknown_mode", "mode_mismatch", "banned",
]);

const WORDS = {
  invalid_room: "That room name is not valid: use 1 to 64 letters, digits, _ or -.",
  invalid_name: "That name is not valid: use 1 to 64 characters.",
  room_full: "This room is full.",
  unknown_tier: "This server has no such picture size (the tier in the link).",
  unknown_mode: "This server has no such room mode (the mode in the link).",
  mode_mismatch: "This room already runs in another mode: join without a mode, or pick another room.",
  too_many_rooms: "The server has no room for another meeting right now.",
  unauthorized: "You are not allowed in this room (missing or expired invitation).",
  forbidden: "You are not allowed to do that in this room.",
  media_failed: "The media connection failed. Reconnecting…",
  server_shutdown: "The server is restarting. Reconnecting…",
  reconnect: "The room's media server went away. Reconnecting…",
  directory_unavailable: "The server cannot open new rooms right now. Retrying…",
  invalid_sdp: "Your browser's media offer was refused by the server.",
  chat_too_large: "That message is too long to send.",
  chat_rate_limited: "You are sending messages too fast; wait a moment.",
  unknown_peer: "That participant has already left.",
};

function describe(error) {
  return WORDS[error.code] ?? error.message ?? "Something went wrong.";
}

/** Play a received video; where autoplay with sound is refused, muted until the user clicks it. */
function play(video) {
  video.play().catch(() => {
    video.muted = true;
    video.play().catch(() => {});
    setStatus("Click a picture to turn the sound on.");
    video.addEventListener("click", () => { video.muted = false; }, { once: true });
  });
}

/** A trickled candidate as the signaling protocol carries it (null: end of candidates). */
function candidateJson(candidate) {
  return candidate
    ? { candidate: candidate.candidate, sdpMid: candidate.sdpMid, sdpMLineIndex: candidate.sdpMLineIndex }
    : { candidate: "" };
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

class Meeting {
  constructor(room, name, mode) {
    this.room = room;
    this.name = name;
    this.mode = mode; // asked for when creating a room ("" : the server's default)
    this.roomMode = "mcu"; // what the room is, from joined
    this.iceServers = [];
    this.links = new Map(); // mesh: peerId -> RTCPeerConnection
    this.streams = new Map(); // sfu and mesh: peerId -> MediaStream shown in its tile
    this.inbox = Promise.resolve(); // messages are handled one after the other
    this.participants = new Map(); // peerId -> {name, video, audio}
    this.peerId = null;
    this.ws = null;
    this.pc = null;
    this.chat = null;
    this.local = null; // MediaStream from the camera and microphone
    this.sending = { video: false, audio: false };
    // mcu rooms: whether our picture is on screen, and whether the server wants our video
    // (docs/protocol.md, "visibility"); null until the server says.
    this.visibility = null;
    this.videoSending = Promise.resolve(); // pauses and resumes of the upstream, one after the other
    this.stopped = false;
    this.retries = 0;
    this.deviceWarning = ""; // shown for as long as the meeting lasts
    this.screen = new ScreenShare(this, $("share")); // client/web/share.js
  }

  async start() {
    $("join-form").hidden = true;
    $("meeting").hidden = false;
    await this.openDevices();
    listDevices(this).catch((error) => console.warn("enumerateDevices", error));
    watchLinks(this, () => this.renderParticipants());
    this.connect();
  }

  // Camera and microphone; a denied camera still joins with audio (the others then
  // see the placeholder tile with the name), a denied microphone still watches.
  async openDevices() {
    const attempts = [
      [{ audio: true, video: { width: 640, height: 360 } }, ""],
      [{ audio: true }, "Camera unavailable or denied: you joined with audio only."],
      [{ video: { width: 640, height: 360 } }, "Microphone unavailable or denied: you joined without sound."],
    ];
    for (const [constraints, warning] of attempts) {
      try {
        this.local = await navigator.mediaDevices.getUserMedia(constraints);
        this.deviceWarning = warning;
        break;
      } catch (error) {
        console.warn("getUserMedia", constraints, error);
      }
    }
    if (!this.local) {
      this.deviceWarning = "Camera and microphone unavailable or denied: you can watch and listen only.";
      this.local = new MediaStream();
    }
    showError(this.deviceWarning);
    this.sending.video = this.local.getVideoTracks().length > 0;
    this.sending.audio = this.local.getAudioTracks().length > 0;
    $("local").srcObject = this.local;
    $("camera").disabled = !this.sending.video;
    $("mute").disabled = !this.sending.audio;
  }

  wsUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/ws`;
  }

  connect() {
    setStatus(this.retries ? "Reconnecting…" : "Connecting…");
    const ws = new WebSocket(this.wsUrl());
    this.ws = ws;
    // A new connection's messages must not queue behind a handler of the old one that never
    // settles (an await on its closed peer connection): the page would stay "Reconnecting…".
    this.inbox = Promise.resolve();
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.send(this.joinMessage());
    };
    // One at a time: a relayed candidate must not overtake the offer it belongs to.
    ws.onmessage = (event) => {
      const message = JSON.parse(event.data);
      this.inbox = this.inbox.then(() => this.onMessage(message)).catch((error) => console.error(error));
    };
    ws.onclose = () => {
      if (ws !== this.ws) return;
      this.closePeer();
      if (this.stopped) return;
      if (!opened) showError("Cannot reach the server. Retrying…");
      this.reconnectLater();
    };
  }

  // The join, with what the page's address adds to it (?token=... from an invitation link,
  // ?tier=low for a smaller picture, ?hideSelf=1 to leave our own tile out).
  joinMessage() {
    const message = { type: "join", room: this.room, name: this.name };
    const params = new URLSearchParams(location.search);
    const token = params.get("token");
    if (token) message.token = token;
    const tier = params.get("tier");
    if (tier) message.tier = tier;
    if (["1", "true"].includes(params.get("hideSelf"))) message.hideSelf = true;
    if (this.mode) message.mode = this.mode;
    return message;
  }

  reconnectLater() {
    const delay = Math.min(1000 * 2 ** this.retries, 10000);
    this.retries += 1;
    setStatus(`Disconnected. Reconnecting in ${Math.round(delay / 1000)} s…`);
    setTimeout(() => { if (!this.stopped) this.connect(); }, delay);
  }

  send(message) {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  async onMessage(message) {
    this.screen.onMessage(message);
    switch (message.type) {
      case "joined":
        this.retries = 0;
        showError(this.deviceWarning);
        this.peerId = message.peerId;
        this.visibility = null; // a new connection sends video until told otherwise
        this.participants = new Map(message.participants.map((p) => [p.peerId, p]));
        this.participants.set(this.peerId, { name: `${this.name} (you)`, ...this.sending });
        this.grants = new Set(message.grants ?? []);
        this.roomMode = message.mode ?? "mcu";
        showRoomControls(this, message);
        this.renderParticipants();
        showRecording(message.recording);
        setStatus(`In room ${this.room}`);
        this.showMode(message.mode ?? "mcu", message.iceServers);
        if (this.roomMode === "mesh") await this.startMesh(message.participants);
        else await this.startPeer(message.iceServers);
        break;
      case "answer":
        if (message.from) await this.onPeerAnswer(message);
        else await this.pc?.setRemoteDescription({ type: "answer", sdp: message.sdp });
        break;
      case "offer":
        if (message.from) await this.onPeerOffer(message);
        else await this.onServerOffer(message);
        break;
      case "candidate":
        if (message.from) await this.onPeerCandidate(message);
        break;
      case "participantJoined":
        this.participants.set(message.peerId, { name: message.name, video: true, audio: true });
        this.renderParticipants();
        break;
      case "participantLeft":
        this.participants.delete(message.peerId);
        this.dropPeer(message.peerId);
        this.renderParticipants();
        break;
      case "participantAudio": {
        const entry = this.participants.get(message.peerId);
        if (entry) Object.assign(entry, { moderatorMuted: message.muted, volume: message.volume });
        this.renderParticipants();
        break;
      }
      case "layoutChanged":
        showLayout(message.layout);
        break;
      case "participantMedia": {
        const entry = this.participants.get(message.peerId);
        if (entry) Object.assign(entry, { video: message.video, audio: message.audio });
        this.renderParticipants();
        break;
      }
      case "speaking": {
        const entry = this.participants.get(message.peerId);
        if (entry) entry.speaking = message.speaking;
        this.renderParticipants();
        break;
      }
      case "activeSpeaker":
        this.activeSpeaker = message.peerId;
        this.renderParticipants();
        break;
      case "tier":
        // The server moved our picture to what our link carries (docs/protocol.md, "tier").
        this.tier = message.tier;
        this.tierReport = message; // the link indicator says which tier, and why
        setStatus(
          message.tier === message.ceiling
            ? `In room ${this.room}`
            : `In room ${this.room}: ${message.tier === "audio" ? "audio only" : "a smaller picture"}, your connection is slow`,
        );
        break;
      case "visibility":
        // Off screen for a while: the server decodes nothing of our video, so stop encoding it.
        this.visibility = { onScreen: message.onScreen, sendVideo: message.sendVideo };
        this.renderParticipants();
        this.applyVideoSending();
        break;
      case "recordingStarted":
        showRecording(message);
        showRecordingControl(true);
        break;
      case "recordingStopped":
        showRecording(null);
        showRecordingControl(false);
        break;
      case "error":
        this.onError(message);
        break;
    }
  }

  onError(error) {
    showError(describe(error));
    if (error.code === "kicked") {
      // A moderator removed us: rejoining by ourselves would undo it (and a token is refused a while).
      this.peerId = null; // the server has already taken us out: no leave to send
      this.stop(error.message);
      showError(error.message);
    } else if (FATAL.has(error.code) && !this.peerId) {
      // Refused before joining: reconnecting would be refused again.
      this.stop(describe(error));
    } else if (error.code === "media_failed") {
      this.peerId = null;
      this.closePeer();
      this.send(this.joinMessage());
    } else if (error.code === "directory_unavailable") {
      // Redis is away: the room cannot be placed yet; the server closes nothing, so ask again later.
      setTimeout(() => { if (!this.stopped && !this.peerId) this.send(this.joinMessage()); }, 3000);
    }
  }

  // ?relay=1 sends and receives only through the TURN server of `iceServers` (iceTransportPolicy
  // "relay"): the way to put a browser behind an impaired relay (client/impairment.py).
  rtcConfiguration(iceServers) {
    const relay = ["1", "true"].includes(new URLSearchParams(location.search).get("relay"));
    return { iceServers, iceTransportPolicy: relay ? "relay" : "all" };
  }

  async startPeer(iceServers) {
    this.closePeer();
    const pc = new RTCPeerConnection(this.rtcConfiguration(iceServers));
    this.pc = pc;
    // Always offer audio and video (the server expects both); without a device the
    // transceiver simply sends nothing.
    for (const kind of ["audio", "video"]) {
      const track = this.local.getTracks().find((t) => t.kind === kind);
      pc.addTransceiver(track ?? kind, { direction: "sendrecv", streams: [this.local] });
    }
    this.openChat(pc.createDataChannel("chat"));
    const remote = new MediaStream();
    pc.ontrack = (event) => {
      remote.addTrack(event.track);
      const video = $("remote");
      if (video.srcObject !== remote) video.srcObject = remote;
      video.play().catch(() => {
        // Autoplay with sound was refused: play muted until the user clicks.
        video.muted = true;
        video.play();
        setStatus("Click the picture to turn the sound on.");
        video.addEventListener("click", () => { video.muted = false; }, { once: true });
      });
    };
    pc.onicecandidate = ({ candidate }) => {
      this.send({
        type: "candidate",
        candidate: candidate
          ? { candidate: candidate.candidate, sdpMid: candidate.sdpMid, sdpMLineIndex: candidate.sdpMLineIndex }
          : { candidate: "" },
      });
    };
    pc.onconnectionstatechange = () => {
      const words = {
        connecting: "Connecting media…",
        connected: `In room ${this.room}`,
        disconnected: "Media interrupted, waiting…",
        failed: "The media connection failed.",
      };
      if (words[pc.connectionState]) setStatus(words[pc.connectionState]);
    };
    await pc.setLocalDescription(await pc.createOffer());
    this.send({ type: "offer", sdp: pc.localDescription.sdp });
    if (!this.sending.video || !this.sending.audio) this.sendMedia();
    this.applyVideoSending();
  }

  // The camera's upstream is encoded only while the server wants it and, in an mcu room (which
  // shows a placeholder, not our black frames), while the user has the camera on. Neither side
  // undoes the other: the user's switch is the track's `enabled`, the server's only this.
  videoWanted() {
    return this.visibility?.sendVideo !== false && (this.sending.video || this.roomMode !== "mcu");
  }

  // Pauses or resumes the encoding of the camera's upstream (RTCRtpSender encodings' `active`)
  // and leaves the track alone: the camera stays open and the preview plays, and a resumed
  // encoder starts on a keyframe. Calls run one after the other, each applying the latest wish.
  applyVideoSending() {
    this.videoSending = this.videoSending.then(async () => {
      const sender = this.pc?.getSenders().find((s) => s.track?.kind === "video");
      const parameters = sender?.getParameters();
      if (!parameters?.encodings?.length) return;
      const active = this.videoWanted();
      if (parameters.encodings.every((encoding) => encoding.active === active)) return;
      for (const encoding of parameters.encodings) encoding.active = active;
      await sender.setParameters(parameters);
    }).catch((error) => console.warn("setParameters", error));
    return this.videoSending;
  }

  // The room's mode decides what the stage shows: the composite (mcu), or one tile per
  // other participant (sfu: tracks forwarded by the server; mesh: a connection to each).
  showMode(mode, iceServers) {
    this.roomMode = mode;
    this.iceServers = iceServers;
    $("remote").hidden = mode !== "mcu";
    $("tiles").hidden = mode === "mcu";
    // Chat travels on a data channel to the server, which a mesh room does not have.
    $("chat-text").disabled = $("chat-send").disabled = mode === "mesh";
    $("chat-text").placeholder = mode === "mesh" ? "No chat in a mesh room" : "Message";
  }

  // sfu: the server offers what it forwards, with the map of mid -> publisher; we answer.
  async onServerOffer(message) {
    const pc = this.pc;
    if (!pc) return;
    await pc.setRemoteDescription({ type: "offer", sdp: message.sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    this.send({ type: "answer", sdp: pc.localDescription.sdp });
    const owners = new Map((message.tracks ?? []).map((t) => [t.mid, t.peerId]));
    for (const transceiver of pc.getTransceivers()) {
      const peerId = owners.get(transceiver.mid);
      if (peerId) this.showTrack(peerId, transceiver.receiver.track);
    }
    const publishers = new Set(owners.values());
    for (const peerId of [...this.streams.keys()]) if (!publishers.has(peerId)) this.dropTile(peerId);
  }

  // mesh: the newcomer offers to everyone already there; they answer (so offers never cross).
  async startMesh(participants) {
    this.closePeer();
    await Promise.all(participants.map((p) => this.offerTo(p.peerId)));
    if (!this.sending.video || !this.sending.audio) this.sendMedia();
  }

  link(peerId) {
    let pc = this.links.get(peerId);
    if (pc) return pc;
    pc = new RTCPeerConnection(this.rtcConfiguration(this.iceServers));
    this.links.set(peerId, pc);
    pc.ontrack = (event) => this.showTrack(peerId, event.track);
    // Candidates found before the description went out travel inside it; only later ones trickle.
    pc.onicecandidate = ({ candidate }) => {
      if (pc.trickle) this.send({ type: "candidate", to: peerId, candidate: candidateJson(candidate) });
    };
    return pc;
  }

  // mesh: one message per connection rather than one per candidate, since the server's rate limit
  // counts what it relays (a newcomer offers to everyone at once): wait for gathering, 2 s at most.
  async describe(pc, type, peerId) {
    await pc.setLocalDescription(type === "offer" ? await pc.createOffer() : await pc.createAnswer());
    if (pc.iceGatheringState !== "complete") {
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, 2000);
        pc.addEventListener("icegatheringstatechange", () => {
          if (pc.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
        });
      });
    }
    pc.trickle = pc.iceGatheringState !== "complete";
    this.send({ type, to: peerId, sdp: pc.localDescription.sdp });
  }

  async offerTo(peerId) {
    const pc = this.link(peerId);
    for (const kind of ["audio", "video"]) {
      const track = this.local.getTracks().find((t) => t.kind === kind);
      pc.addTransceiver(track ?? kind, { direction: track ? "sendrecv" : "recvonly", streams: [this.local] });
    }
    await this.describe(pc, "offer", peerId);
  }

  async onPeerOffer(message) {
    const pc = this.link(message.from);
    await pc.setRemoteDescription({ type: "offer", sdp: message.sdp });
    for (const track of this.local.getTracks()) {
      if (!pc.getSenders().some((sender) => sender.track === track)) pc.addTrack(track, this.local);
    }
    await this.describe(pc, "answer", message.from);
  }

  async onPeerAnswer(message) {
    const pc = this.links.get(message.from);
    if (pc?.signalingState === "have-local-offer") await pc.setRemoteDescription({ type: "answer", sdp: message.sdp });
  }

  async onPeerCandidate(message) {
    const pc = this.links.get(message.from);
    if (!pc) return;
    try {
      await pc.addIceCandidate(message.candidate.candidate ? message.candidate : null);
    } catch (error) {
      console.warn("candidate from", message.from, error);
    }
  }

  dropPeer(peerId) {
    this.links.get(peerId)?.close();
    this.links.delete(peerId);
    this.dropTile(peerId);
  }

  // A named tile per publisher, playing the tracks received from it.
  showTrack(peerId, track) {
    let stream = this.streams.get(peerId);
    if (!stream) {
      stream = new MediaStream();
      this.streams.set(peerId, stream);
      const figure = document.createElement("figure");
      figure.className = "tile";
      figure.dataset.peerId = peerId;
      const video = document.createElement("video");
      video.autoplay = video.playsInline = true;
      video.srcObject = stream;
      figure.append(video, document.createElement("figcaption"));
      $("tiles").append(figure);
      this.renderTiles();
    }
    for (const old of stream.getTracks()) if (old.kind === track.kind && old !== track) stream.removeTrack(old);
    if (!stream.getTracks().includes(track)) stream.addTrack(track);
    play(this.tile(peerId).querySelector("video"));
  }

  tile(peerId) {
    return [...$("tiles").children].find((figure) => figure.dataset.peerId === peerId);
  }

  dropTile(peerId) {
    this.streams.delete(peerId);
    this.tile(peerId)?.remove();
  }

  renderTiles() {
    for (const figure of $("tiles").children) {
      figure.querySelector("figcaption").textContent = this.participants.get(figure.dataset.peerId)?.name ?? "";
    }
  }

  openChat(channel) {
    this.chat = channel;
    channel.onmessage = (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch { return; }
      if (message.type === "chat") this.renderChat(message);
      else if (message.type === "error") showError(describe(message));
    };
  }

  sendChat(text) {
    if (this.chat?.readyState !== "open") {
      showError("Chat is not connected yet.");
      return false;
    }
    this.chat.send(JSON.stringify({ type: "chat", text }));
    return true;
  }

  renderChat(message) {
    const item = document.createElement("li");
    const time = document.createElement("time");
    const when = new Date(message.timestamp);
    time.dateTime = when.toISOString();
    time.textContent = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    const from = document.createElement("span");
    from.className = "from";
    from.textContent = message.from === this.peerId ? "You" : message.name;
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = message.text;
    item.append(time, from, text);
    $("chat-log").append(item);
    item.scrollIntoView({ block: "nearest" });
  }

  renderParticipants() {
    renderParticipantList(this);
    this.renderTiles();
  }

  sendMedia() {
    this.send({ type: "setMedia", video: this.sending.video, audio: this.sending.audio });
  }

  toggle(kind) {
    const tracks = kind === "video" ? this.local.getVideoTracks() : this.local.getAudioTracks();
    if (!tracks.length) return;
    this.sending[kind] = !this.sending[kind];
    for (const track of tracks) track.enabled = this.sending[kind];
    const button = kind === "video" ? $("camera") : $("mute");
    button.setAttribute("aria-pressed", String(!this.sending[kind]));
    button.textContent = kind === "video"
      ? (this.sending.video ? "Camera off" : "Camera on")
      : (this.sending.audio ? "Mute" : "Unmute");
    const self = this.participants.get(this.peerId);
    if (self) Object.assign(self, this.sending);
    this.renderParticipants();
    this.sendMedia();
    if (kind === "video") this.applyVideoSending();
  }

  closePeer() {
    for (const pc of this.links.values()) pc.close();
    this.links.clear();
    this.streams.clear();
    $("tiles").replaceChildren();
    this.chat = null;
    if (this.pc) {
      this.pc.close();
      this.pc = null;
    }
  }

  stop(reason) {
    this.stopped = true;
    this.screen.stop(false);
    if (this.peerId) this.send({ type: "leave" });
    this.closePeer();
    this.ws?.close();
    for (const track of this.local?.getTracks() ?? []) track.stop();
    setStatus(reason ?? "You left the meeting.");
    $("meeting").hidden = true;
    $("join-form").hidden = false;
  }
}

let meeting = null;

function join(room, name, mode) {
  showError("");
  meeting = new Meeting(room, name, mode);
  window.meeting = meeting; // for the console and the browser tests
  meeting.start();
}

$("join-form").addEventListener("submit", (event) => {
  event.preventDefault();
  join($("room").value.trim(), $("name").value.trim(), $("mode").value);
});
$("mute").addEventListener("click", () => meeting?.toggle("audio"));
$("camera").addEventListener("click", () => meeting?.toggle("video"));
$("leave").addEventListener("click", () => meeting?.stop());
installControls(() => meeting);
installDevicePickers(() => meeting, showError);
$("chat-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("chat-text");
  if (input.value.trim() && meeting?.sendChat(input.value)) input.value = "";
});

// A shareable link: /?room=R&name=N joins at once.
const params = new URLSearchParams(location.search);
if (params.get("room")) $("room").value = params.get("room");
if (params.get("name")) $("name").value = params.get("name");
// ?mode=sfu (or mcu, mesh) creates the room in that mode.
if (params.get("mode")) $("mode").value = params.get("mode");
if (params.get("room") && params.get("name")) join(params.get("room"), params.get("name"), params.get("mode") ?? "");
