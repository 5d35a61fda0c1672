"""`python manage.py seed_demo`: demo users, fleet, releases and changes for the embedded default, and (development
only) the image repository and the director started by the development key ceremony, so that demo rollouts are
signed and vehicles can verify them."""

from typing import Any

from django.core.management.base import BaseCommand
from django.test.utils import override_settings

from devices.firmware.director.ceremony import director_dev_ceremony
from devices.firmware.director.services import director_initialised
from devices.firmware.repository.ceremony import dev_ceremony
from devices.firmware.repository.selectors import image_repository_initialised
from rollouts.demo.seed import DEMO_SECURITY_OFFICER, DEMO_USERS, seed_demo


class Command(BaseCommand):
    help = (
        "Load demo data (idempotent), start the image repository and the director with the DEVELOPMENT key ceremony "
        "unless they have a root already, and print the demo users with their passwords."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        # Seeding runs before the demo's Temporal server: the worker's reconcile loop starts the change workflows.
        with override_settings(TEMPORAL_ENABLED=False):
            created, users = seed_demo()
        self.stdout.write("Demo data loaded." if created else "Demo data already present.")
        if not image_repository_initialised():
            officer, _ = users[DEMO_SECURITY_OFFICER]
            root = dev_ceremony(actor=officer)
            self.stdout.write(
                f"Image repository started by the DEVELOPMENT key ceremony (root v{root.version}); "
                "rollouts started from now on list their release in the signed targets."
            )
        if not director_initialised():
            officer, _ = users[DEMO_SECURITY_OFFICER]
            director_root = director_dev_ceremony(actor=officer)
            self.stdout.write(
                f"Director started by the DEVELOPMENT key ceremony (director root v{director_root.version}); "
                "offers carry per-device director metadata from now on."
            )
        self.stdout.write("\nDemo users (passwords are kept in .data/demo-credentials.txt):")
        for demo in DEMO_USERS:
            _, password = users[demo.username]
            roles = ", ".join(demo.roles) or "administrator (admin site)"
            self.stdout.write(f"  {demo.username:<6} {password:<18} {roles}")
        self.stdout.write("\nOpen http://127.0.0.1:8000/ — API docs at /api/docs/, admin at /admin/.")
