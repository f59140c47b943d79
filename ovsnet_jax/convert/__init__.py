"""Weight conversion from open_clip checkpoints."""
