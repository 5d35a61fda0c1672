"""Template tags of the web UI: {% load ota_ui %} loads them all (ota_time, ota_charts, ota_widgets)."""
