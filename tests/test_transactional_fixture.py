"""Transactional tests (the ones later issues use for Temporal end-to-end runs) see the migration data."""

import pytest
from django.contrib.auth.models import Group

from approvals.models import ApprovalPolicy, RiskQuestion
from ota_project.roles import Role


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("attempt", [1, 2])
def test_roles_and_policy_exist_in_every_transactional_test(attempt):
    # The second run comes after a flush; both must see the same data.
    assert set(Group.objects.values_list("name", flat=True)) >= set(Role.values)
    assert ApprovalPolicy.objects.count() == 12 and RiskQuestion.objects.count() == 7
