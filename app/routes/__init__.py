"""HTTP routes. Each router declares its own auth dependency; tests/test_app_auth.py
fails for any route that answers without credentials and is not on its allow-list."""
