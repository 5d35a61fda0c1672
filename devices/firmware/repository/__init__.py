"""The image repository: TUF metadata (root, targets, snapshot, timestamp) signed in the token, kept in the database
and published as static files.

`models` holds what was published, `signers` signs through the token (keys never leave it), `files` writes the
static tree atomically, `services` builds and signs the metadata. A release reaches the targets only through the
approval-gated signing step (devices.firmware.signing), the one caller of `image_target_add`.
"""
