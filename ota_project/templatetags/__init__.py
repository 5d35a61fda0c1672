"""Template tags of the web UI ({% load ota_ui %})."""
