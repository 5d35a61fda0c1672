"""End-to-end tests in headless Chromium (Playwright) against a live server."""
