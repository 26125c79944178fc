"""The quarantine: `store` keeps held messages durably (the mail path writes there), `release`
re-injects one through Postfix exactly once (only ``filterctl quarantine`` does)."""
