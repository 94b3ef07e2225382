// The meeting page: one WebSocket for signaling, one peer connection for media and chat.
// Protocol: docs/protocol.md. Plain modules, no build step.

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
  "forbidden", "room_full", "too_many_rooms", "unknown_tier",
]);

const WORDS = {
  invalid_room: "That room name is not valid: use 1 to 64 letters, digits, _ or -.",
  invalid_name: "That name is not valid: use 1 to 64 characters.",
  room_full: "This room is full.",
  unknown_tier: "This server has no such picture size (the tier in the link).",
  too_many_rooms: "The server has no room for another meeting right now.",
  unauthorized: "You are not allowed in this room (missing or expired invitation).",
  forbidden: "You are not allowed to do that in this room.",
  media_failed: "The media connection failed. Reconnecting…",
  server_shutdown: "The server is restarting. Reconnecting…",
  invalid_sdp: "Your browser's media offer was refused by the server.",
  chat_too_large: "That message is too long to send.",
  chat_rate_limited: "You are sending messages too fast; wait a moment.",
};

function describe(error) {
  return WORDS[error.code] ?? error.message ?? "Something went wrong.";
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
  constructor(room, name) {
    this.room = room;
    this.name = name;
    this.participants = new Map(); // peerId -> {name, video, audio}
    this.peerId = null;
    this.ws = null;
    this.pc = null;
    this.chat = null;
    this.local = null; // MediaStream from the camera and microphone
    this.sending = { video: false, audio: false };
    this.stopped = false;
    this.retries = 0;
    this.deviceWarning = ""; // shown for as long as the meeting lasts
  }

  async start() {
    $("join-form").hidden = true;
    $("meeting").hidden = false;
    await this.openDevices();
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
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.send(this.joinMessage());
    };
    ws.onmessage = (event) => this.onMessage(JSON.parse(event.data));
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
    switch (message.type) {
      case "joined":
        this.retries = 0;
        showError(this.deviceWarning);
        this.peerId = message.peerId;
        this.participants = new Map(message.participants.map((p) => [p.peerId, p]));
        this.participants.set(this.peerId, { name: `${this.name} (you)`, ...this.sending });
        this.renderParticipants();
        showRecording(message.recording);
        setStatus(`In room ${this.room}`);
        await this.startPeer(message.iceServers);
        break;
      case "answer":
        await this.pc?.setRemoteDescription({ type: "answer", sdp: message.sdp });
        break;
      case "participantJoined":
        this.participants.set(message.peerId, { name: message.name, video: true, audio: true });
        this.renderParticipants();
        break;
      case "participantLeft":
        this.participants.delete(message.peerId);
        this.renderParticipants();
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
      case "recordingStarted":
        showRecording(message);
        break;
      case "recordingStopped":
        showRecording(null);
        break;
      case "error":
        this.onError(message);
        break;
    }
  }

  onError(error) {
    showError(describe(error));
    if (FATAL.has(error.code) && !this.peerId) {
      // Refused before joining: reconnecting would be refused again.
      this.stop(describe(error));
    } else if (error.code === "media_failed") {
      this.peerId = null;
      this.closePeer();
      this.send(this.joinMessage());
    }
  }

  async startPeer(iceServers) {
    this.closePeer();
    const pc = new RTCPeerConnection({ iceServers });
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
    const list = $("participants");
    list.replaceChildren(...[...this.participants].map(([peerId, p]) => {
      const item = document.createElement("li");
      item.dataset.peerId = peerId;
      item.textContent = p.name;
      // Who speaks now, and who holds the floor (activeSpeaker).
      item.classList.toggle("speaking", Boolean(p.speaking));
      item.classList.toggle("floor", peerId === this.activeSpeaker);
      const off = [p.video === false && "camera off", p.audio === false && "muted"].filter(Boolean);
      if (off.length) {
        const state = document.createElement("span");
        state.className = "state";
        state.textContent = off.join(", ");
        item.append(state);
      }
      return item;
    }));
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
  }

  closePeer() {
    this.chat = null;
    if (this.pc) {
      this.pc.close();
      this.pc = null;
    }
  }

  stop(reason) {
    this.stopped = true;
    this.send({ type: "leave" });
    this.closePeer();
    this.ws?.close();
    for (const track of this.local?.getTracks() ?? []) track.stop();
    setStatus(reason ?? "You left the meeting.");
    $("meeting").hidden = true;
    $("join-form").hidden = false;
  }
}

let meeting = null;

function join(room, name) {
  showError("");
  meeting = new Meeting(room, name);
  window.meeting = meeting; // for the console and the browser tests
  meeting.start();
}

$("join-form").addEventListener("submit", (event) => {
  event.preventDefault();
  join($("room").value.trim(), $("name").value.trim());
});
$("mute").addEventListener("click", () => meeting?.toggle("audio"));
$("camera").addEventListener("click", () => meeting?.toggle("video"));
$("leave").addEventListener("click", () => meeting?.stop());
$("chat-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("chat-text");
  if (input.value.trim() && meeting?.sendChat(input.value)) input.value = "";
});

// A shareable link: /?room=R&name=N joins at once.
const params = new URLSearchParams(location.search);
if (params.get("room")) $("room").value = params.get("room");
if (params.get("name")) $("name").value = params.get("name");
if (params.get("room") && params.get("name")) join(params.get("room"), params.get("name"));
