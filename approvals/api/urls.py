from django.urls import path
from rest_framework.routers import SimpleRouter

from approvals.api import views

router = SimpleRouter()
router.register("changes", views.ChangeViewSet, basename="change")
router.register("risk/questions", views.RiskQuestionViewSet, basename="risk-question")
router.register("approval-policies", views.ApprovalPolicyViewSet, basename="approval-policy")
router.register("change-templates", views.ChangeTemplateViewSet, basename="change-template")

urlpatterns = [
    path("scope/preview/", views.ScopePreviewView.as_view(), name="scope-preview"),
    path("risk/preview/", views.RiskPreviewView.as_view(), name="risk-preview"),
    *router.urls,
]
