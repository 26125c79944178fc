"""Real services for end-to-end tests: each starts on free loopback ports in a temp dir and stops."""
