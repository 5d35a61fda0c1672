"""Signing keys in a PKCS#11 token: sessions, key pairs, signatures (`token`), and the public side (`public`).

The lowest layer every room may import: the firmware key registry, the audit record, the image repository and the
director all sign through `token`; auditors, tests and vehicles verify through `public` without any token.
"""
