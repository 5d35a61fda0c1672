"""`python manage.py seed_demo`: demo users, fleet, releases and changes for the embedded default."""

from typing import Any

from django.core.management.base import BaseCommand

from rollouts.demo.seed import DEMO_USERS, seed_demo


class Command(BaseCommand):
    help = "Load demo data (idempotent) and print the demo users with their passwords."

    def handle(self, *args: Any, **options: Any) -> None:
        created, users = seed_demo()
        self.stdout.write("Demo data loaded." if created else "Demo data already present.")
        self.stdout.write("\nDemo users (passwords are kept in .data/demo-credentials.txt):")
        for demo in DEMO_USERS:
            _, password = users[demo.username]
            roles = ", ".join(demo.roles) or "administrator (admin site)"
            self.stdout.write(f"  {demo.username:<6} {password:<18} {roles}")
        self.stdout.write("\nOpen http://127.0.0.1:8000/ — API docs at /api/docs/, admin at /admin/.")
