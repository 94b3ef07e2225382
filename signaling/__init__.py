"""
Signaling for the MCU: the wire protocol (:mod:`signaling.protocol`), the WebSocket
endpoint and the room directory.

Submodules are imported where they are used, so that clients which need only the
message types do not pull in the server.
"""
