"""{% load ota_ui %}: every shared UI tag and filter in one load, gathered from the modules that define them.

- ota_time: {% when %} (local times), |duration_words
- ota_charts: {% bar_chart %}, {% stacked_bars %}, {% line_chart %}
- ota_widgets: {% progress %}, {% status_badge %}, |status_label, {% confirm_action %}, {% main_nav %},
  {% user_roles %}, |message_class

Markup lives in templates/includes/widgets/ and templates/includes/charts/; the computation behind it in
ota_project.web.widgets and ota_project.web.charts. Templates may also load the smaller libraries directly.
"""

from __future__ import annotations

from django import template

from ota_project.templatetags import ota_charts, ota_time, ota_widgets

register = template.Library()

for _library in (ota_time.register, ota_charts.register, ota_widgets.register):
    register.tags.update(_library.tags)
    register.filters.update(_library.filters)
