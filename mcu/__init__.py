"""The MCU server, in four layers (docs/architecture.md has the path of a frame through them).

- `mcu.server`: the process a user starts: command line, HTTP and WebSocket app, REST API,
  metrics, configuration, and the front that spreads rooms over worker processes.
- `mcu.rooms`: what a room is: its participants, the mode that handles their streams
  (mcu, sfu, mesh), chat, recording, and each receiver's link and tier.
- `mcu.media`: the room's media: the video process (decode, compose, encode on the video
  clock), the audio pipeline (mix-minus on the audio clock), encoders and the tracks that
  carry their packets out.
- `mcu.rtc`: every use of aiortc's and aioice's private API (pinned in pyproject.toml,
  each covered by tests/test_aiortc_internals.py): fast packet paths in and out, the
  receivers' jitter buffers, NACK pacing and rate counting.
"""
