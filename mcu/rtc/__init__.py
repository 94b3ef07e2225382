"""Our side of aiortc: every use of aiortc's and aioice's private API, and nothing else needs one.

aiortc is pinned (pyproject.toml); each private attribute or method these modules rely on
has a test in tests/test_aiortc_internals.py, so that an upgrade which changes one fails
there. tests/test_layers.py checks that no other package touches aiortc's or aioice's
private names. Packets in (intake, receiver, jitter, rate, header_extensions), packets
out (sender, datagrams, numbering), feedback (link), and the small helpers they share.
"""
