"""The KPI page: success rate, mean time to recover, share on the latest release, rollbacks per release."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from ota_project.roles import Role
from ota_project.web.access import role_required
from rollouts import kpis
from rollouts.web.forms import KpiPeriodForm


@require_GET
@role_required(*Role.values)
def rollout_kpis(request: HttpRequest) -> HttpResponse:
    """The four KPIs over the last N days or weeks, as charts and as tables."""
    form = KpiPeriodForm(request.GET or None)
    report = None
    if not form.is_bound:
        report = kpis.kpi_report(unit=kpis.WEEK)
    elif form.is_valid():
        report = kpis.kpi_report(unit=form.cleaned_data["unit"], count=form.cleaned_data["periods"])
    context: dict[str, object] = {"form": form, "report": report}
    if report is not None:
        context.update(_charts(report))
    return render(request, "rollouts/kpis.html", context, status=200 if report is not None else 400)


def _percent(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 1)


def _charts(report: kpis.KpiReport) -> dict[str, object]:
    """Chart inputs for the ota_ui tags, from the report's rows."""
    success_series = [
        {
            "label": "Success rate (%)",
            # Each value carries its n (deployments finished): the chart marks small samples and shows n.
            "points": [(r.period.start, _percent(r.rate), r.attempted) for r in report.success if r.rate is not None],
        }
    ]
    outcomes = [
        (r.period.label, {"succeeded": r.succeeded, "failed": r.failed, "timed_out": r.timed_out,
                          "rolled_back": r.rolled_back})
        for r in report.success
    ]  # fmt: skip
    mttr_bars = [
        (f"{row.period.label} (n={len(row.recoveries)})", round(row.mean.total_seconds() / 60, 1))
        for row in report.recovery.rows
        if row.mean is not None
    ]
    share_series = [
        {
            "label": share.model,
            "points": [(p.at, _percent(p.share), p.devices) for p in share.points if p.share is not None],
        }
        for share in report.shares
    ]
    releases = [row.release for row in report.rollbacks if row.total]
    rollback_rows = [
        (period.label, {row.release: row.per_period[i] for row in report.rollbacks if row.total})
        for i, period in enumerate(report.periods)
    ]
    share_table = [
        {"label": period.label, "points": [share.points[i] for share in report.shares]}
        for i, period in enumerate(report.periods)
    ]
    return {
        "share_table": share_table,
        "success_series": success_series,
        "outcome_rows": outcomes,
        "outcome_series": ["succeeded", "failed", "timed_out", "rolled_back"],
        "has_outcomes": any(r.attempted for r in report.success),
        "mttr_bars": mttr_bars,
        "share_series": share_series,
        "rollback_rows": rollback_rows if releases else [],
        "rollback_series": [(release, release) for release in releases],
    }
