// The meeting's controls beyond joining and leaving: what a participant's grants allow it to do
// to the room (layout, recording; the `joined` message lists both), the room's link to share,
// and keyboard shortcuts. Protocol: docs/protocol.md.

const $ = (id) => document.getElementById(id);

// Layouts offered when the server's `joined` does not list them (a server older than the list).
const DEFAULT_LAYOUTS = ["grid", "speaker", "pip"];

/** Show the controls `joined` allows: the layout picker (grant layout) and recording (grant record), mcu rooms only. */
export function showRoomControls(meeting, joined) {
  const composed = joined.mode === undefined || joined.mode === "mcu";
  const picker = $("layout");
  const names = joined.layouts?.length ? joined.layouts : DEFAULT_LAYOUTS;
  picker.replaceChildren(...names.map((name) => new Option(name, name)));
  $("layout-control").hidden = !(composed && meeting.grants.has("layout"));
  showLayout(joined.layout);
  $("record").hidden = !(composed && meeting.grants.has("record"));
  showRecordingControl(Boolean(joined.recording));
}

/** The room's layout as `joined` or `layoutChanged` says it: a name, or custom regions (set through the API). */
export function showLayout(layout) {
  const picker = $("layout");
  const name = typeof layout === "string" ? layout : "custom";
  if (![...picker.options].some((option) => option.value === name)) {
    const option = new Option(name, name);
    option.disabled = true;
    picker.append(option);
  }
  picker.value = name;
}

/** The record button says what a press does next. */
export function showRecordingControl(recording) {
  const button = $("record");
  button.dataset.recording = String(recording);
  button.setAttribute("aria-pressed", String(recording));
  button.textContent = recording ? "Stop recording" : "Start recording";
}

/** Whether a key press goes to something that takes typing (the chat box, a field): no shortcut there. */
function typing(target) {
  return target instanceof HTMLElement
    && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
}

/** The link to this room: the page's address with the room and nothing personal (no name, no token). */
export function roomLink(room) {
  const link = new URL("/", location.href);
  link.searchParams.set("room", room);
  return link.href;
}

// Copies through the Clipboard API; where it is missing or refused (plain http off loopback,
// no permission), shows the link selected in a field, for the user to copy.
async function copyLink(room) {
  const link = roomLink(room);
  const field = $("room-link");
  const result = $("copy-result");
  try {
    await navigator.clipboard.writeText(link);
    field.hidden = true;
    result.textContent = "Link copied.";
  } catch {
    field.value = link;
    field.hidden = false;
    field.select();
    result.textContent = document.execCommand?.("copy") ? "Link copied." : "Copy the link from the field.";
  }
}

/** Wire the controls once for the page; `current()` is the meeting of the moment (null before a join). */
export function installControls(current) {
  $("layout").addEventListener("change", (event) => {
    current()?.send({ type: "setLayout", layout: event.target.value });
  });
  $("record").addEventListener("click", () => {
    const recording = $("record").dataset.recording === "true";
    current()?.send({ type: recording ? "stopRecording" : "startRecording" });
  });
  $("copy-link").addEventListener("click", () => {
    const meeting = current();
    if (meeting) copyLink(meeting.room);
  });
  // m: microphone, v: camera; never while typing, never with a modifier (the browser's own keys).
  document.addEventListener("keydown", (event) => {
    const meeting = current();
    if (!meeting || meeting.stopped || event.repeat || event.ctrlKey || event.metaKey || event.altKey) return;
    if (typing(event.target)) return;
    const kind = { m: "audio", v: "video" }[event.key.toLowerCase()];
    if (!kind) return;
    event.preventDefault();
    meeting.toggle(kind);
  });
}
