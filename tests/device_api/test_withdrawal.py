"""A device taken out of service mid-deployment loses its offer and its download, not only future offers."""

from __future__ import annotations

import pytest

from devices.services import device_quarantine
from rollouts.choices import DeploymentStatus
from rollouts.models import Deployment
from tests.device_api.conftest import checkin_body

CHECKIN = "/device/v1/checkin/"

pytestmark = pytest.mark.django_db


def test_a_quarantined_device_loses_its_offer_and_its_download(pilot, running, operator, device_client, artifact_url):
    client = device_client(pilot)
    offer = client.post(CHECKIN, checkin_body(), format="json").json()["offer"]
    deployment_id = offer["deployment_id"]
    status_url = f"/device/v1/deployments/{deployment_id}/status/"
    assert client.post(status_url, {"seq": 1, "status": "downloading"}, format="json").status_code == 200
    device_quarantine(actor=operator, device=pilot, reason="tampered enclosure")
    assert client.get(artifact_url).status_code == 404
    answer = client.post(status_url, {"seq": 2, "status": "downloaded"}, format="json").json()
    assert answer["status"] == DeploymentStatus.CANCELLED
    assert Deployment.objects.get(pk=deployment_id).detail == "withdrawn: the device is quarantined"
