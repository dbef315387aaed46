from django.urls import path

from accounts import api

urlpatterns = [
    path("auth/register", api.RegisterApi.as_view(), name="api-register"),
    path("auth/register/confirm", api.RegisterConfirmApi.as_view(), name="api-register-confirm"),
    path("auth/token", api.TokenObtainApi.as_view(), name="api-token"),
    path("auth/token/refresh", api.TokenRefreshApi.as_view(), name="api-token-refresh"),
    path("auth/logout", api.LogoutApi.as_view(), name="api-logout"),
    path("me/password", api.PasswordChangeApi.as_view(), name="api-password"),
    path("me", api.MeApi.as_view(), name="api-me"),
    path("orgs", api.OrganizationListApi.as_view(), name="api-orgs"),
    path("orgs/<slug:org>", api.OrganizationDetailApi.as_view(), name="api-org"),
    path("orgs/<slug:org>/members", api.MemberListApi.as_view(), name="api-members"),
    path("orgs/<slug:org>/members/<int:member_id>", api.MemberDetailApi.as_view(), name="api-member"),
    path("orgs/<slug:org>/api-keys", api.ApiKeyListApi.as_view(), name="api-keys"),
    path("orgs/<slug:org>/api-keys/<int:key_id>", api.ApiKeyDetailApi.as_view(), name="api-key"),
    path("orgs/<slug:org>/audit-events", api.AuditEventListApi.as_view(), name="api-audit-events"),
]
