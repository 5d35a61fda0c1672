"""`python manage.py temporal_worker`: run the Temporal worker for rollouts until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections, connections

from approvals import timers as change_timers
from ota_project.errors import DomainError
from rollouts import rollout_services
from workflows.client import temporal_client
from workflows.search_attributes import SearchAttributesMissing, ensure_search_attributes
from workflows.worker import DEFAULT_GRACEFUL_SHUTDOWN_SECONDS, DEFAULT_MAX_CONCURRENT_ACTIVITIES, run_worker

logger = logging.getLogger("workflows.worker")
ENSURE_WORKFLOWS_EVERY_SECONDS = 60


class Command(BaseCommand):
    help = (
        "Run the Temporal worker (RolloutWorkflow, ChangeWorkflow and their activities) on TEMPORAL_TASK_QUEUE. "
        "Registers the search attributes first. SIGTERM/SIGINT: stop polling, let running activities finish, exit 0. "
        "Run it as its own process (it ends with os._exit)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--max-concurrent-activities",
            type=int,
            default=DEFAULT_MAX_CONCURRENT_ACTIVITIES,
            help=f"Activities this process runs at once (= activity threads; default {DEFAULT_MAX_CONCURRENT_ACTIVITIES}).",
        )
        parser.add_argument(
            "--graceful-shutdown-seconds",
            type=float,
            default=DEFAULT_GRACEFUL_SHUTDOWN_SECONDS,
            help="On SIGTERM/SIGINT, how long running activities may finish before they are cancelled.",
        )
        parser.add_argument(
            "--register-search-attributes",
            action="store_true",
            help="Only register the rollout search attributes in TEMPORAL_NAMESPACE, then exit.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["max_concurrent_activities"] < 1:
            self.stderr.write("--max-concurrent-activities must be at least 1")
            self._exit(2)
        try:
            if options["register_search_attributes"]:
                asyncio.run(self._register())
            else:
                asyncio.run(
                    run_worker(
                        max_concurrent_activities=options["max_concurrent_activities"],
                        graceful_shutdown_seconds=options["graceful_shutdown_seconds"],
                        on_started=lambda _worker: self._started(options["max_concurrent_activities"]),
                    )
                )
        except SearchAttributesMissing as err:
            self.stderr.write(f"temporal_worker: {err}")
            self._exit(1)
        except RuntimeError as err:
            if not str(err).startswith("Failed client connect"):
                logger.exception("temporal_worker: %s", err)
            else:
                self.stderr.write(f"temporal_worker: cannot connect to Temporal at {settings.TEMPORAL_ADDRESS}: {err}")
            self._exit(1)
        except Exception as err:
            logger.exception("temporal_worker: %s", err)
            self._exit(1)
        if not options["register_search_attributes"]:
            self.stdout.write("temporal_worker: stopped")
        self._exit(0)

    async def _register(self) -> None:
        added = await ensure_search_attributes(await temporal_client())
        self.stdout.write(
            f"search attributes in namespace {settings.TEMPORAL_NAMESPACE}: "
            + (f"added {', '.join(added)}" if added else "all present")
        )

    def _started(self, max_concurrent_activities: int) -> None:
        self._announce(max_concurrent_activities)
        threading.Thread(target=self._ensure_workflows_forever, name="rollout-workflows-ensure", daemon=True).start()

    def _ensure_workflows_forever(self) -> None:
        """Start workflows of rollouts and changes recorded while Temporal was unreachable: now, then every minute."""
        while True:
            close_old_connections()
            try:
                started = rollout_services.rollout_workflows_ensure()
            except DomainError as err:
                logger.warning("temporal_worker: cannot start waiting rollouts yet: %s", err.message)
            except Exception:  # never let the reconciler kill the worker; the next round tries again
                logger.exception("temporal_worker: starting waiting rollouts failed")
            else:
                if started:
                    logger.info("temporal_worker: started workflows of rollouts %s", started)
            try:
                change_timers.change_workflows_ensure()
            except Exception:  # never let the reconciler kill the worker; the next round tries again
                logger.exception("temporal_worker: starting change workflows failed")
            finally:
                close_old_connections()
            time.sleep(ENSURE_WORKFLOWS_EVERY_SECONDS)

    def _announce(self, max_concurrent_activities: int) -> None:
        self.stdout.write(
            f"temporal_worker: polling task queue {settings.TEMPORAL_TASK_QUEUE} on {settings.TEMPORAL_ADDRESS} "
            f"(namespace {settings.TEMPORAL_NAMESPACE}, {max_concurrent_activities} activity slots, pid {os.getpid()})"
        )
        self.stdout.flush()

    def _exit(self, code: int) -> None:
        # The Temporal runtime can crash the interpreter at exit (sdk-python#300): flush, close, leave now.
        connections.close_all()
        self.stdout.flush()
        self.stderr.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
