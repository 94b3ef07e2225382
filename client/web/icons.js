// Icons drawn as inline SVG: a symbol from a font (an emoji, a dingbat) shows as an empty box
// where no installed font has it, as in Debian's Chromium.

const SVG = "http://www.w3.org/2000/svg";

// 24x24 outlines, filled with the text colour.
const PATHS = {
  // A loudspeaker with one sound wave: who is speaking now.
  speaking: "M3 9v6h4l5 5V4L7 9H3zm13.5 3A4.5 4.5 0 0 0 14 7.97v8.05A4.5 4.5 0 0 0 16.5 12z",
  // A disc: the room is being recorded.
  recording: "M12 5a7 7 0 1 0 0 14 7 7 0 0 0 0-14z",
};

/** An icon; decorative (hidden from screen readers) unless given a `label`. */
export function icon(name, label = "") {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("class", `icon icon-${name}`);
  if (label) {
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", label);
  } else {
    svg.setAttribute("aria-hidden", "true");
  }
  const path = document.createElementNS(SVG, "path");
  path.setAttribute("d", PATHS[name]);
  path.setAttribute("fill", "currentColor");
  svg.append(path);
  return svg;
}
