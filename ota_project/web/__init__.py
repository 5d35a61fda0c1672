"""The web UI's shared layer: sign-in, layout helpers, template tags (no app imports)."""
