// The participant list, updated in place: a row (and a slider being dragged, a button with the
// keyboard focus) outlives the many `speaking` messages that change it. A moderator gets, on
// each other participant, mute, volume and remove (docs/protocol.md, moderateAudio and kick).

import { icon } from "./icons.js";

const $ = (id) => document.getElementById(id);

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function createRow(meeting, peerId) {
  const row = element("li");
  row.dataset.peerId = peerId;
  const speaking = icon("speaking");
  row.append(
    element("span", "name"), speaking, element("span", "state"), element("span", "quality"), element("span", "link"),
  );
  return row;
}

// Mute, volume and remove; in an sfu room the server can only mute (it forwards, it mixes
// nothing), in a mesh room neither (the voices never reach it): remove only.
function createModeration(meeting, peerId) {
  const box = element("span", "moderation");
  const audio = meeting.roomMode !== "mesh";
  if (audio) {
    const mute = element("button", "moderate-mute", "Mute");
    mute.type = "button";
    mute.dataset.action = "mute";
    mute.addEventListener("click", () => {
      const entry = meeting.participants.get(peerId);
      meeting.send({ type: "moderateAudio", peerId, muted: !entry?.moderatorMuted });
    });
    box.append(mute);
  }
  if (audio && meeting.roomMode === "mcu") {
    const volume = element("input", "moderate-volume");
    Object.assign(volume, { type: "range", min: "0", max: "2", step: "0.1", value: "1" });
    volume.dataset.action = "volume";
    // On release (or a key): one message per change, not one per pixel dragged.
    volume.addEventListener("change", () => {
      meeting.send({ type: "moderateAudio", peerId, volume: Number(volume.value) });
    });
    box.append(volume);
  }
  const remove = element("button", "moderate-remove", "Remove");
  remove.type = "button";
  remove.dataset.action = "remove";
  remove.addEventListener("click", () => meeting.send({ type: "kick", peerId }));
  box.append(remove);
  return box;
}

function updateModeration(meeting, row, peerId, entry) {
  const allowed = meeting.grants?.has("moderate") && peerId !== meeting.peerId;
  let box = row.querySelector(".moderation");
  if (!allowed) {
    box?.remove();
    return;
  }
  if (!box) {
    box = createModeration(meeting, peerId);
    row.append(box);
  }
  const name = entry.name;
  const mute = box.querySelector(".moderate-mute");
  if (mute) {
    mute.textContent = entry.moderatorMuted ? "Unmute" : "Mute";
    mute.setAttribute("aria-pressed", String(Boolean(entry.moderatorMuted)));
    mute.setAttribute("aria-label", `${entry.moderatorMuted ? "Unmute" : "Mute"} ${name} for everyone`);
  }
  const volume = box.querySelector(".moderate-volume");
  if (volume) {
    volume.setAttribute("aria-label", `Volume of ${name}`);
    if (document.activeElement !== volume && entry.volume !== undefined) volume.value = String(entry.volume);
    volume.setAttribute("aria-valuetext", `${Math.round(Number(volume.value) * 100)} %`);
  }
  box.querySelector(".moderate-remove").setAttribute("aria-label", `Remove ${name} from the room`);
}

function updateRow(meeting, row, peerId, entry) {
  row.querySelector(".name").textContent = entry.name;
  // Who speaks now, and who holds the floor (activeSpeaker).
  row.classList.toggle("speaking", Boolean(entry.speaking));
  row.classList.toggle("floor", peerId === meeting.activeSpeaker);
  const states = [
    entry.video === false && "camera off",
    entry.audio === false && "muted",
    entry.moderatorMuted && "muted by a moderator",
    peerId === meeting.peerId && meeting.visibility?.onScreen === false && "not on screen",
  ].filter(Boolean);
  row.querySelector(".state").textContent = states.join(", ");
  const quality = meeting.quality?.get(peerId);
  const badge = row.querySelector(".quality");
  badge.textContent = quality?.text ?? "";
  badge.title = quality?.detail ?? "";
  badge.dataset.level = quality?.level ?? "";
  // Our own link in words (RTT, loss, the tier we receive and why); the others' on hover.
  row.querySelector(".link").textContent = peerId === meeting.peerId ? quality?.detail ?? "" : "";
  updateModeration(meeting, row, peerId, entry);
}

const owners = new WeakMap(); // the list -> the meeting its rows were made for

/** Bring the list to `meeting.participants` (in its order), reusing each participant's row. */
export function renderParticipantList(meeting) {
  const list = $("participants");
  // Rows made for an earlier meeting of this page hold its controls: start afresh.
  if (owners.get(list) !== meeting) {
    list.replaceChildren();
    owners.set(list, meeting);
  }
  const rows = new Map([...list.children].map((row) => [row.dataset.peerId, row]));
  let previous = null;
  for (const [peerId, entry] of meeting.participants) {
    const row = rows.get(peerId) ?? createRow(meeting, peerId);
    rows.delete(peerId);
    updateRow(meeting, row, peerId, entry);
    const expected = previous ? previous.nextSibling : list.firstChild;
    if (expected !== row) list.insertBefore(row, expected);
    previous = row;
  }
  for (const row of rows.values()) row.remove();
}
