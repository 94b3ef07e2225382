"""What a room is: its participants, the mode that handles their streams, chat, recording, tiers."""
