"""The signing-key registry: one key per role, its public half and TUF key id, its life (active, retired, revoked).

Private halves live in the PKCS#11 token (ota_project.hsm.token) or, for offline roles, on an offline token that is
never attached to the server; this registry holds only public keys. The models belong to the `firmware` app.
"""
