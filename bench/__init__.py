"""Gateway benchmark: a fast mock upstream, load generators and the side-by-side runner."""
