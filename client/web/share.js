// Screen sharing from the page (docs/protocol.md, "share"): the screen from getDisplayMedia goes on a
// second video section (sendonly) of the meeting's peer connection, offered once; `share` names its
// mid. Stopping keeps the section (replaceTrack(null)), so the next share needs no renegotiation.

export class ScreenShare {
  constructor(meeting, button) {
    this.meeting = meeting;
    this.button = button;
    this.transceiver = null; // our screen's section, on `pc`
    this.pc = null;
    this.track = null; // the screen being shared, null when none
    this.pending = false; // asked for, and the room has not said it shows it yet
    this.screens = []; // peerIds sharing now, from joined and screenShare
    this.allowed = false; // joined an mcu room (sfu and mesh rooms compose nothing to show a screen in)
    this.starting = false; // waiting for the user to pick a screen
    button.onclick = () => (this.track ? this.stop() : this.start()); // the meeting of now, not a former one
    this.render();
  }

  // `track`: a video track to share instead of asking the user (tests, a canvas' captureStream()).
  async start(track = null) {
    const meeting = this.meeting;
    if (!meeting.pc || !this.allowed || this.track || this.starting) return;
    if (!track) {
      this.starting = true;
      try {
        const stream = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: 15 }, audio: false });
        track = stream.getVideoTracks()[0];
      } catch (error) {
        console.warn("getDisplayMedia", error); // the user cancelled the picker, or it is not allowed
        return;
      } finally {
        this.starting = false;
      }
    }
    const pc = meeting.pc;
    if (!pc) {
      track.stop(); // the meeting ended while the user picked
      return;
    }
    track.contentHint = "detail"; // text stays sharp: the encoder gives up frame rate before resolution
    track.addEventListener("ended", () => { if (this.track === track) this.stop(); }); // the browser's own Stop
    this.track = track;
    this.pending = true;
    if (this.transceiver && this.pc === pc) {
      await this.transceiver.sender.replaceTrack(track);
    } else {
      this.pc = pc;
      this.transceiver = pc.addTransceiver(track, { direction: "sendonly" });
      await pc.setLocalDescription(await pc.createOffer());
      meeting.send({ type: "offer", sdp: pc.localDescription.sdp }); // its answer: app.js applies it
    }
    meeting.send({ type: "share", mid: this.transceiver.mid });
    this.render();
  }

  stop(tell = true) {
    const track = this.track;
    this.track = null;
    this.pending = false;
    if (track) track.stop();
    if (this.transceiver && this.pc === this.meeting.pc) this.transceiver.sender.replaceTrack(null);
    if (tell && track) this.meeting.send({ type: "stopShare" });
    this.render();
  }

  // Every server message passes here first: who shares, and a share refused.
  onMessage(message) {
    switch (message.type) {
      case "joined": // a new connection: a new peer connection without our section
        this.stop(false);
        this.transceiver = null;
        this.screens = [...(message.screens ?? [])];
        this.allowed = (message.mode ?? "mcu") === "mcu";
        break;
      case "screenShare":
        this.screens = this.screens.filter((peerId) => peerId !== message.peerId);
        if (message.sharing) this.screens.push(message.peerId);
        if (message.peerId === this.meeting.peerId) this.pending = false;
        break;
      case "error": // the refusal of our share (share_limit, forbidden, wrong_mode): it sends nothing more
        if (this.pending) this.stop(false);
        break;
      default:
        return;
    }
    this.render();
  }

  render() {
    const sharing = Boolean(this.track);
    this.button.textContent = sharing ? "Stop sharing" : "Share screen";
    this.button.setAttribute("aria-pressed", String(sharing));
    this.button.disabled = !sharing && !(this.allowed && navigator.mediaDevices?.getDisplayMedia);
    const others = this.screens.filter((peerId) => peerId !== this.meeting.peerId);
    const names = others.map((peerId) => this.meeting.participants.get(peerId)?.name ?? peerId);
    this.button.title = names.length ? `Sharing now: ${names.join(", ")}` : "";
  }
}
