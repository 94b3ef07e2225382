// Camera and microphone selection: the new device's track replaces the old one on every
// sender (RTCRtpSender.replaceTrack), so the call goes on without a new offer or a rejoin.

const $ = (id) => document.getElementById(id);

const PICKERS = { video: "camera-device", audio: "mic-device" };
const KINDS = { videoinput: "video", audioinput: "audio" };

/** Fill the two pickers with the devices there are (named once the page may use them), the ones in use chosen. */
export async function listDevices(meeting) {
  if (!navigator.mediaDevices?.enumerateDevices) return;
  const devices = await navigator.mediaDevices.enumerateDevices();
  for (const [kind, id] of Object.entries(PICKERS)) {
    const picker = $(id);
    const mine = devices.filter((device) => KINDS[device.kind] === kind && device.deviceId);
    picker.replaceChildren(...mine.map((device, index) => {
      const label = device.label || `${kind === "video" ? "Camera" : "Microphone"} ${index + 1}`;
      return new Option(label, device.deviceId);
    }));
    const inUse = meeting.local?.getTracks().find((track) => track.kind === kind)?.getSettings().deviceId;
    if (inUse) picker.value = inUse;
    picker.disabled = mine.length === 0;
  }
}

// The senders of our `kind` of media: the one peer connection of an mcu or sfu room, or one per
// other participant in a mesh room. A sender that has no track yet (joined without that device)
// is found by its transceiver, the first of its kind that sends.
function senders(meeting, kind) {
  const found = [];
  for (const pc of [meeting.pc, ...meeting.links.values()]) {
    if (!pc || pc.connectionState === "closed") continue;
    const transceiver = pc.getTransceivers().find(
      (t) => t.sender.track?.kind === kind || (!t.sender.track && t.receiver.track?.kind === kind && t.direction === "sendrecv"),
    );
    if (transceiver) found.push(transceiver.sender);
  }
  return found;
}

/** Use the device `deviceId` for `kind` ("video", "audio") from now on, without leaving the room. */
export async function switchDevice(meeting, kind, deviceId) {
  const constraints = kind === "video"
    ? { video: { deviceId: { exact: deviceId }, width: 640, height: 360 } }
    : { audio: { deviceId: { exact: deviceId } } };
  const stream = await navigator.mediaDevices.getUserMedia(constraints);
  const track = stream.getTracks()[0];
  const old = meeting.local.getTracks().find((t) => t.kind === kind);
  // A muted microphone or a camera turned off stays so on the new device.
  track.enabled = old ? old.enabled : true;
  await Promise.all(senders(meeting, kind).map((sender) => sender.replaceTrack(track)));
  if (old) {
    meeting.local.removeTrack(old);
    old.stop();
  }
  meeting.local.addTrack(track);
  if (!old) {
    // Joined without this device: it now sends, and its button works.
    meeting.sending[kind] = true;
    $(kind === "video" ? "camera" : "mute").disabled = false;
    meeting.sendMedia();
    if (kind === "video") meeting.applyVideoSending();
  }
  return track;
}

/** Switch on a choice in either picker; a failure (the device went away, was refused) says so and keeps the old one. */
export function installDevicePickers(current, onError) {
  for (const [kind, id] of Object.entries(PICKERS)) {
    $(id).addEventListener("change", async (event) => {
      const meeting = current();
      if (!meeting?.local) return;
      try {
        await switchDevice(meeting, kind, event.target.value);
      } catch (error) {
        console.warn("switching", kind, error);
        onError(`Could not switch to that ${kind === "video" ? "camera" : "microphone"}.`);
        await listDevices(meeting);
      }
    });
  }
  navigator.mediaDevices?.addEventListener?.("devicechange", () => {
    const meeting = current();
    if (meeting) listDevices(meeting);
  });
}
