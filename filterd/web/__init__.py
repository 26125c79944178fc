"""The web console (`filterctl web`): review the quarantine, read the history, scan a message.

A Flask application (filterd.web.app) served by waitress; needs the `web` extra.
"""
