"""The director (Uptane's director repository, simplified): its own offline root and an online `director` key that
signs, per device and per offer, targets metadata naming the one image that device must install.

`models` keeps the director's root versions, `services` drafts, checks and stores the root and signs per-device
targets, `ceremony` is the development key ceremony. Which deployment gets which metadata, and when it is withdrawn,
is the rollouts room's business (rollouts.director): this room knows devices and images, not rollouts.
"""
