"""Sender authentication: SPF, DKIM, DMARC and ARC results, and what the checks share.

The checks themselves live in `filterd.checks` (one module each); this package holds what more
than one of them needs: the result types they leave on `Transaction.auth_results`, the
Authentication-Results header (RFC 8601), the DKIM key table, the DMARC record and alignment
rules, and the DNS adapter dkimpy is given.
"""
