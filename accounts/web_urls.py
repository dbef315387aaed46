from django.contrib.auth import views as auth_views
from django.urls import path

from accounts import views

urlpatterns = [
    path("", views.home, name="home"),
    path(
        "login/", auth_views.LoginView.as_view(template_name="accounts/login.html", form_class=views.EmailLoginForm), name="login"
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("signup/", views.signup, name="signup"),
    path("signup/confirm/<str:token>/", views.signup_confirm, name="signup-confirm"),
    path("password/", views.PasswordChangeView.as_view(), name="password-change"),
    # "orgs" and "new" are reserved slugs, so these paths never shadow an organization.
    path("orgs/", views.organization_switch, name="org-switch"),
    path("orgs/new/", views.organization_create, name="org-create"),
    path("orgs/<slug:org>/settings/", views.organization_settings, name="org-settings"),
    path("orgs/<slug:org>/members/", views.members, name="org-members"),
    path("orgs/<slug:org>/members/<int:member_id>/role/", views.member_role, name="org-member-role"),
    path("orgs/<slug:org>/members/<int:member_id>/remove/", views.member_remove, name="org-member-remove"),
    path("orgs/<slug:org>/api-keys/", views.api_keys, name="org-api-keys"),
    path("orgs/<slug:org>/api-keys/<int:key_id>/revoke/", views.api_key_revoke, name="org-api-key-revoke"),
    path("orgs/<slug:org>/audit/", views.audit_log, name="org-audit"),
]
