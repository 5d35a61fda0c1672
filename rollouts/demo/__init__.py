"""The embedded demo of `make run`: users for every role, a fleet, releases, changes in several states (`seed`),
a rollout history played through the services (`history`, `playback`), and the `seed_demo` command.

It sits above every app (it drives them all through their services); nothing imports it but tests.
"""
