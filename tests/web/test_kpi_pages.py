"""KPI page: who may see it, the figures as charts and tables, empty states and bad period choices."""

from __future__ import annotations

import re

import pytest

from ota_project.roles import Role
from rollouts import rollout_services as steps
from rollouts.choices import DeploymentKind, RolloutStatus
from rollouts.models import Deployment
from tests.fleet_driver import FAIL_BOOT, HAPPY, play
from tests.support.html import find, find_all, row_cells, table_captioned, visible_text
from tests.support.rollouts import expect_offer
from tests.web.helpers import page_client
from workflows.types import PhaseChange

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_temporal")]

URL = "/rollouts/kpis/"


@pytest.fixture
def rolled_back(approved_change, operator):
    """A pilot wave where one device succeeds and one falls back; the rollout halts and rolls the first one back."""
    rollout = steps.rollout_start(actor=operator, change=approved_change)
    steps.rollout_phase(PhaseChange(rollout.pk, RolloutStatus.RUNNING, 0))
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    pilots = Deployment.objects.filter(rollout=rollout).order_by("pk")
    for deployment, statuses in zip(pilots, (HAPPY, FAIL_BOOT), strict=True):
        play(expect_offer(deployment.device), statuses)
    steps.rollout_halt(rollout_id=rollout.pk, wave_index=0, reason="pilot failed")
    steps.rollback_assign(rollout_id=rollout.pk)
    rollback = Deployment.objects.get(rollout=rollout, kind=DeploymentKind.ROLLBACK)
    play(expect_offer(rollback.device), HAPPY)
    steps.rollout_finish(rollout_id=rollout.pk, outcome=RolloutStatus.ROLLED_BACK, reason="restored")
    return rollout


def test_anonymous_visitors_sign_in_first(client):
    response = client.get(URL)
    assert response.status_code == 302 and response["Location"] == "/login/?next=/rollouts/kpis/"


def test_people_without_a_role_get_403(make_user):
    response = page_client(make_user()).get(URL)
    assert response.status_code == 403 and "You need the" in response.content.decode()


@pytest.mark.parametrize("role", list(Role.values))
def test_every_role_sees_the_kpis(make_user, role):
    response = page_client(make_user(role)).get(URL)
    html = response.content.decode()
    assert response.status_code == 200 and html.count("<h1>") == 1 and "Rollout KPIs" in html


def test_empty_states_before_any_rollout(auditor, fleet):
    html = page_client(auditor).get(URL).content.decode()
    assert "No deployment finished in these periods" in html
    assert "No recovery in these periods" in html
    assert "No rollback in these periods" in html
    # The fleet exists, so the share is known even without rollouts: everyone on 1.0.0, tcu-4g-r2's latest is 1.1.0.
    shares = table_captioned(html, "Devices on the latest release now, per hardware model")
    assert row_cells(shares, "tcu-4g-r2")[:3] == ["1.1.0", "20", "0"]
    assert row_cells(shares, "tcu-5g-r1")[:3] == ["1.0.0", "80", "80"]


def test_figures_after_a_rolled_back_rollout(auditor, rolled_back):
    html = page_client(auditor).get(URL, {"unit": "day", "periods": "7"}).content.decode()
    assert "over the last 7 days" in html
    assert 'data-testid="success-total">1 of 2</strong> succeeded' in html and "(50 %)" in html
    assert 'data-testid="mttr-mean">' in html and f"Rollout {rolled_back.pk}</a>" in html
    rollbacks_match = re.search(r'id="rollbacks-heading".*?</section>', html, re.S)
    assert rollbacks_match is not None
    rollbacks = rollbacks_match.group(0)
    # 1.1.0: one rolled-back rollout, one device restored by the saga, one that fell back on its own.
    assert row_cells(table_captioned(rollbacks, "Rollbacks per release"), "1.1.0") == ["1", "1", "1"]
    (chart,) = find_all(rollbacks, "figure", class_="stacked-bars")
    assert visible_text(find(chart, "figcaption")) == "Rolled-back rollouts per period and release"
    assert [item.text() for item in find_all(chart, "li")] == ["1.1.0"]  # one series per rolled-back release
    assert len(find_all(html, "figure", class_="chart")) >= 4


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"unit": "month"}, "Select a valid choice."),
        ({"unit": "week", "periods": "53"}, "At most 52 weeks."),
        ({"unit": "day", "periods": "0"}, "greater than or equal to 1"),
        ({"periods": "many"}, "Enter a whole number."),
    ],
)
def test_bad_period_choices_are_field_errors_not_500(operator, query, message):
    response = page_client(operator).get(URL, query)
    html = response.content.decode()
    assert response.status_code == 400 and message in html and "These periods cannot be shown" in html


def test_one_period_with_data_is_a_value_with_its_n_not_a_line(auditor, rolled_back):
    html = page_client(auditor).get(URL, {"unit": "day", "periods": "7"}).content.decode()
    success = re.search(r'id="success-heading".*?</section>', html, re.S)
    assert success is not None
    single = find(success.group(0), "figure", **{"data-testid": "chart-single"})
    text = visible_text(single)
    assert "50 %" in text and "(n=2, a small sample)" in text
    assert not find_all(single, "svg")
    recovery = re.search(r'id="mttr-heading".*?</section>', html, re.S)
    assert recovery is not None and "(n=1)" in recovery.group(0)
