"""The project's routes plus the check-in benchmark's two baselines, served on the same server in the same run.

`hello`: the cheapest Django answer (middleware, routing, a response). `hello_query`: the same plus one indexed
query (the device row by its unique serial, taken from the request's device credential as a check-in would).
Only bench.settings routes them.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt

from devices.models import Device

HELLO = b'{"hello":"device"}'


@csrf_exempt
def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse(HELLO, content_type="application/json")


@csrf_exempt
def hello_query(request: HttpRequest) -> HttpResponse:
    serial = request.headers.get("Authorization", "").partition(" ")[2].partition(":")[0]
    found = Device.objects.filter(serial=serial).values_list("pk", flat=True).first()
    return HttpResponse(b'{"device":%d}' % (found or 0), content_type="application/json")


urlpatterns = [
    path("bench/hello/", hello),
    path("bench/hello-query/", hello_query),
    path("", include("ota_project.urls")),
]
