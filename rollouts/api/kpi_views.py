"""The KPI API: the five rollout KPIs of the KPI page as JSON, for any role (read-only)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from ota_project.serializers import ApiErrorSerializer
from rollouts import kpis


class KpiQuerySerializer(serializers.Serializer):
    """Which periods: `unit` day or week (default week), `periods` how many (default 14 days or 12 weeks)."""

    unit = serializers.ChoiceField(choices=kpis.PERIOD_UNITS, default=kpis.WEEK)
    periods = serializers.IntegerField(min_value=1, max_value=max(kpis.MAX_PERIODS.values()), required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unit = attrs["unit"]
        count = attrs.get("periods") or kpis.DEFAULT_PERIODS[unit]
        if count > kpis.MAX_PERIODS[unit]:
            raise serializers.ValidationError({"periods": [f"At most {kpis.MAX_PERIODS[unit]} {unit}s."]})
        attrs["periods"] = count
        return attrs


def _seconds(value: timedelta | None) -> float | None:
    return None if value is None else value.total_seconds()


def kpi_report_json(report: kpis.KpiReport) -> dict[str, Any]:
    """The report as plain JSON: times ISO-8601 UTC, durations in seconds, rates as fractions (null when unknown)."""
    return {
        "unit": report.unit,
        "periods": [{"label": p.label, "start": p.start, "end": p.end} for p in report.periods],
        "success_rate": {
            "rows": [
                {
                    "period": row.period.label,
                    "succeeded": row.succeeded,
                    "failed": row.failed,
                    "timed_out": row.timed_out,
                    "rolled_back": row.rolled_back,
                    "attempted": row.attempted,
                    "rate": row.rate,
                }
                for row in report.success
            ],
            "total": None
            if report.success_total is None
            else {"attempted": report.success_total.attempted, "rate": report.success_total.rate},
        },
        "mean_time_to_recover": {
            "mean_seconds": _seconds(report.recovery.mean),
            "rows": [
                {"period": row.period.label, "recoveries": len(row.recoveries), "mean_seconds": _seconds(row.mean)}
                for row in report.recovery.rows
            ],
            "recoveries": [
                {
                    "rollout": r.rollout_id,
                    "change": r.change_id,
                    "release": r.release,
                    "rollback_release": r.rollback_release,
                    "halted_at": r.halted_at,
                    "recovered_at": r.recovered_at,
                    "devices": r.devices,
                    "seconds": r.duration.total_seconds(),
                }
                for r in report.recovery.recoveries
            ],
            "unrecovered_rollouts": report.recovery.unrecovered,
        },
        "latest_release_share": [
            {
                "hardware_model": share.model,
                "points": [
                    {"at": p.at, "latest": p.latest, "devices": p.devices, "on_latest": p.on_latest, "share": p.share}
                    for p in share.points
                ],
            }
            for share in report.shares
        ],
        "rollbacks_per_release": [
            {
                "release": row.release,
                "per_period": row.per_period,
                "total": row.total,
                "devices_restored": row.devices_restored,
                "device_fallbacks": row.device_fallbacks,
            }
            for row in report.rollbacks
        ],
        "incidents_contained": {
            "halts": report.incidents.halts,
            "contained": len(report.incidents.contained),
            "share": report.incidents.share,
            "rows": [
                {"period": row.period.label, "halts": row.halts, "contained": row.contained, "share": row.share}
                for row in report.incidents.rows
            ],
            "contained_rollouts": report.incidents.contained,
            "escaped_rollouts": report.incidents.escaped,
        },
    }


class KpiView(APIView):
    """GET /api/v1/kpis/: success rate, MTTR, share on the latest release, rollbacks, incidents contained."""

    @extend_schema(
        parameters=[
            OpenApiParameter("unit", str, enum=list(kpis.PERIOD_UNITS)),
            OpenApiParameter("periods", int, description="How many periods, ending with the current one."),
        ],
        responses={
            200: OpenApiTypes.OBJECT,
            400: OpenApiResponse(ApiErrorSerializer, description="Bad unit or period count (field errors)."),
        },
    )
    def get(self, request: Request) -> Response:
        query = KpiQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        report = kpis.kpi_report(unit=query.validated_data["unit"], count=query.validated_data["periods"])
        return Response(kpi_report_json(report))
