"""Page tests for the web UI (Django test client)."""
