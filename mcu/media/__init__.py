"""A room's media: the video process and its clock, the audio pipeline and its clock, the encoders."""
