"""filterctl, the admin's command line."""
