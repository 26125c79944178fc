"""The checks: one module each (or a few small related ones), found by `filterd.registry`.

A new check is one module here with a `Check` subclass that has a `name`; the registry finds it,
hands its `Settings` to the configuration and puts it in order from what it declares.  Nothing
is listed here: a list would be a second place to forget.
"""
