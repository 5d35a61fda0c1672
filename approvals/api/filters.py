"""Query filters for change lists (the decision record's live in approvals.audit.api.filters)."""

import django_filters
from django.db.models import QuerySet

from approvals.choices import ChangeStatus, ChangeType, RiskLevel
from approvals.models import ChangeRequest
from ota_project.roles import acting_user


class ChangeFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=ChangeStatus.choices)
    change_type = django_filters.ChoiceFilter(choices=ChangeType.choices)
    risk_level = django_filters.MultipleChoiceFilter(choices=RiskLevel.choices)
    author = django_filters.CharFilter(field_name="author__username")
    release = django_filters.CharFilter(field_name="release__version")
    mine = django_filters.BooleanFilter(method="filter_mine", label="Only changes I authored")

    class Meta:
        model = ChangeRequest
        fields = ["status", "change_type", "risk_level", "author", "release"]

    def filter_mine(self, queryset: QuerySet[ChangeRequest], name: str, value: bool) -> QuerySet[ChangeRequest]:
        if value is None:
            return queryset
        user = acting_user(self.request) if self.request else None
        return queryset.filter(author=user) if value else queryset.exclude(author=user)
