"""REST API for accounts: registration, JWT, the caller, organizations, members, keys, audit."""

from __future__ import annotations

from django.conf import settings
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView

from accounts import selectors, services
from accounts.authentication import sign_in_lockout_message
from accounts.models import Role
from accounts.principals import caller_from_request
from platform_site.errors import PermissionDenied, RateLimited
from platform_site.pagination import Pagination, paginated
from platform_site.serializers import StrictSerializer


class UserOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    email = serializers.EmailField()
    name = serializers.CharField()
    date_joined = serializers.DateTimeField()


class OrganizationOutputSerializer(serializers.Serializer):
    slug = serializers.SlugField()
    name = serializers.CharField()
    created_at = serializers.DateTimeField()
    role = serializers.CharField(source="caller_role", default=None)


def registration_links(request) -> dict:
    """The web pages a sign-up's email links to, on the host the request came to."""
    return {
        "link_for": lambda token: request.build_absolute_uri(reverse("signup-confirm", args=[token])),
        "login_url": request.build_absolute_uri(reverse("login")),
    }


def registration_sent_message(email: str) -> str:
    """What a sign-up answers, the same whether or not `email` already has an account."""
    return f"Check your inbox: we sent a message to {email}. Open its link to finish signing up."


class RegisterApi(APIView):
    """Answers 202 and the same body whether or not the email has an account (the inbox learns
    which); the account is made by `POST /api/v1/auth/register/confirm` with the emailed token."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    class InputSerializer(StrictSerializer):
        email = serializers.EmailField()
        password = serializers.CharField(write_only=True, trim_whitespace=False)
        name = serializers.CharField(required=False, allow_blank=True, max_length=150, default="")
        organization = serializers.CharField(required=False, allow_blank=True, max_length=150, default="")

    @extend_schema(request=InputSerializer, responses={202: OpenApiTypes.OBJECT})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        email = services.register_user(**data.validated_data, **registration_links(request))
        return Response({"email": email, "detail": registration_sent_message(email)}, status=status.HTTP_202_ACCEPTED)


class RegisterConfirmApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    class InputSerializer(StrictSerializer):
        token = serializers.CharField(max_length=100)

    @extend_schema(request=InputSerializer, responses={201: UserOutputSerializer})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user, org = services.confirm_registration(token=data.validated_data["token"], ip_address=request.META.get("REMOTE_ADDR"))
        org.caller_role = Role.OWNER
        return Response(
            {"user": UserOutputSerializer(user).data, "organization": OrganizationOutputSerializer(org).data},
            status=status.HTTP_201_CREATED,
        )


class TokenObtainApi(TokenObtainPairView):
    """`{email, password}` -> `{access, refresh}`.

    Failed attempts are counted by account and by address (django-axes); past the limit the
    answer is 429 with Retry-After, the right password included, until the lockout ends.
    """

    @extend_schema(responses={200: OpenApiTypes.OBJECT, 401: OpenApiTypes.OBJECT, 429: OpenApiTypes.OBJECT})
    def post(self, request, *args, **kwargs):
        try:
            return super().post(request, *args, **kwargs)
        except AuthenticationFailed:
            # axes marks the request it was given (DRF's) when the attempt hit a lockout.
            if getattr(request, "axes_locked_out", False):
                raise RateLimited(
                    sign_in_lockout_message(), headers={"Retry-After": str(int(settings.AXES_COOLOFF_TIME.total_seconds()))}
                ) from None
            raise


class TokenRefreshApi(TokenRefreshView):
    """`{refresh}` -> `{access, refresh}`: the new refresh token replaces the one presented,
    which is blacklisted (a refresh token works once)."""


class LogoutApi(APIView):
    """Blacklist a refresh token; `all` blacklists every refresh token of its user."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    class InputSerializer(StrictSerializer):
        refresh = serializers.CharField()
        all = serializers.BooleanField(required=False, default=False)

    @extend_schema(
        request=InputSerializer,
        responses={204: None},
        description=(
            "Log out: the refresh token stops working at once (204). With `all: true`, every "
            "refresh token of the same user does too (log out everywhere). Access tokens already "
            "issued work until they expire (JWT_ACCESS_MINUTES). An invalid, expired or already "
            "blacklisted refresh token is a 401."
        ),
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.log_out_refresh_token(refresh=data.validated_data["refresh"], everywhere=data.validated_data["all"])
        return Response(status=status.HTTP_204_NO_CONTENT)


class PasswordChangeApi(APIView):
    class InputSerializer(StrictSerializer):
        old_password = serializers.CharField(write_only=True, trim_whitespace=False)
        new_password = serializers.CharField(write_only=True, trim_whitespace=False)

    @extend_schema(
        request=InputSerializer,
        responses={204: None},
        description=(
            "Change the caller's password (people only, not API keys). Every refresh token of "
            "the user is blacklisted and every access token issued before stops working: sign in again."
        ),
    )
    def post(self, request):
        caller = caller_from_request(request)
        if caller.person is None:
            raise PermissionDenied("API keys have no password; sign in as a person to change yours.")
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.change_password(user=caller.person, **data.validated_data)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MeApi(APIView):
    @extend_schema(
        responses={200: OpenApiTypes.OBJECT},
        description="The caller: a user with their organizations and roles, or an API key with its scopes.",
    )
    def get(self, request):
        caller = caller_from_request(request)
        if caller.api_key is not None:
            key = caller.api_key
            return Response(
                {
                    "api_key": {"prefix": key.prefix, "name": key.name, "scopes": sorted(key.scopes)},
                    "organizations": [{"slug": key.organization_slug, "role": None}],
                }
            )
        memberships = selectors.memberships_of_user(user=request.user)
        return Response(
            {
                "user": UserOutputSerializer(request.user).data,
                "organizations": [
                    {"slug": m.organization.slug, "name": m.organization.name, "role": m.role} for m in memberships
                ],
            }
        )


class OrganizationListApi(APIView):
    class InputSerializer(StrictSerializer):
        name = serializers.CharField(max_length=150)
        slug = serializers.CharField(max_length=50, required=False, allow_blank=True, default="")

    @extend_schema(responses={200: OrganizationOutputSerializer(many=True)}, operation_id="v1_orgs_list")
    def get(self, request):
        caller = caller_from_request(request)
        if caller.api_key is not None:
            orgs = list(selectors.organizations_for_caller(caller=caller))
        else:
            orgs = []
            for membership in selectors.memberships_of_user(user=request.user):
                membership.organization.caller_role = membership.role
                orgs.append(membership.organization)
        return Response({"count": len(orgs), "results": OrganizationOutputSerializer(orgs, many=True).data})

    @extend_schema(request=InputSerializer, responses={201: OrganizationOutputSerializer})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        org = services.create_organization(caller=caller_from_request(request), **data.validated_data)
        org.caller_role = Role.OWNER
        return Response(OrganizationOutputSerializer(org).data, status=status.HTTP_201_CREATED)


class OrganizationDetailApi(APIView):
    class InputSerializer(StrictSerializer):
        name = serializers.CharField(max_length=150)

    @extend_schema(responses={200: OrganizationOutputSerializer})
    def get(self, request, org: str):
        organization = selectors.organization_for_caller(caller=caller_from_request(request), slug=org)
        return Response(OrganizationOutputSerializer(organization).data)

    @extend_schema(request=InputSerializer, responses={200: OrganizationOutputSerializer})
    def patch(self, request, org: str):
        caller = caller_from_request(request)
        organization = selectors.organization_for_caller(caller=caller, slug=org, min_role=Role.ADMIN)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.rename_organization(caller=caller, organization=organization, name=data.validated_data["name"])
        return Response(OrganizationOutputSerializer(organization).data)


class MembershipOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    email = serializers.EmailField(source="user.email")
    name = serializers.CharField(source="user.name")
    role = serializers.CharField()
    created_at = serializers.DateTimeField()


class MemberListApi(APIView):
    pagination_class = Pagination

    class InputSerializer(StrictSerializer):
        email = serializers.EmailField()
        role = serializers.CharField(default=Role.MEMBER)

    @extend_schema(responses={200: MembershipOutputSerializer(many=True)})
    def get(self, request, org: str):
        organization = selectors.organization_for_caller(caller=caller_from_request(request), slug=org)
        return paginated(request, self, selectors.members_of(organization=organization), MembershipOutputSerializer)

    @extend_schema(request=InputSerializer, responses={201: MembershipOutputSerializer})
    def post(self, request, org: str):
        caller = caller_from_request(request)
        organization = selectors.organization_for_caller(caller=caller, slug=org)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        membership = services.add_member(caller=caller, organization=organization, **data.validated_data)
        return Response(MembershipOutputSerializer(membership).data, status=status.HTTP_201_CREATED)


class MemberDetailApi(APIView):
    class InputSerializer(StrictSerializer):
        role = serializers.CharField()

    @extend_schema(responses={200: MembershipOutputSerializer})
    def get(self, request, org: str, member_id: int):
        organization = selectors.organization_for_caller(caller=caller_from_request(request), slug=org)
        return Response(
            MembershipOutputSerializer(selectors.membership_in(organization=organization, membership_id=member_id)).data
        )

    @extend_schema(request=InputSerializer, responses={200: MembershipOutputSerializer})
    def patch(self, request, org: str, member_id: int):
        caller = caller_from_request(request)
        organization = selectors.organization_for_caller(caller=caller, slug=org)
        membership = selectors.membership_in(organization=organization, membership_id=member_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.change_member_role(caller=caller, membership=membership, role=data.validated_data["role"])
        return Response(MembershipOutputSerializer(membership).data)

    @extend_schema(responses={204: None})
    def delete(self, request, org: str, member_id: int):
        caller = caller_from_request(request)
        organization = selectors.organization_for_caller(caller=caller, slug=org)
        membership = selectors.membership_in(organization=organization, membership_id=member_id)
        services.remove_member(caller=caller, membership=membership)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ApiKeyOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    prefix = serializers.CharField()
    scopes = serializers.ListField(child=serializers.CharField())
    created_by = serializers.EmailField(source="created_by.email", default=None)
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    revoked_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField()


class ApiKeyListApi(APIView):
    pagination_class = Pagination

    class InputSerializer(StrictSerializer):
        name = serializers.CharField(max_length=100)
        scopes = serializers.ListField(child=serializers.CharField(), allow_empty=True)
        expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)

    @extend_schema(responses={200: ApiKeyOutputSerializer(many=True)})
    def get(self, request, org: str):
        organization = selectors.organization_for_caller(caller=caller_from_request(request), slug=org)
        return paginated(request, self, selectors.api_keys_of(organization=organization), ApiKeyOutputSerializer)

    @extend_schema(request=InputSerializer, responses={201: ApiKeyOutputSerializer})
    def post(self, request, org: str):
        caller = caller_from_request(request)
        organization = selectors.organization_for_caller(caller=caller, slug=org)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        key, plaintext = services.create_api_key(caller=caller, organization=organization, **data.validated_data)
        body = ApiKeyOutputSerializer(key).data
        body["key"] = plaintext
        return Response(body, status=status.HTTP_201_CREATED)


class ApiKeyDetailApi(APIView):
    @extend_schema(responses={200: ApiKeyOutputSerializer})
    def get(self, request, org: str, key_id: int):
        organization = selectors.organization_for_caller(caller=caller_from_request(request), slug=org)
        return Response(ApiKeyOutputSerializer(selectors.api_key_in(organization=organization, key_id=key_id)).data)

    @extend_schema(responses={204: None}, description="Revoke the key; it stops working everywhere within API_KEY_CACHE_SECONDS.")
    def delete(self, request, org: str, key_id: int):
        caller = caller_from_request(request)
        organization = selectors.organization_for_caller(caller=caller, slug=org)
        key = selectors.api_key_in(organization=organization, key_id=key_id)
        services.revoke_api_key(caller=caller, key=key)
        return Response(status=status.HTTP_204_NO_CONTENT)


class AuditEventOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    action = serializers.CharField()
    actor = serializers.EmailField(source="actor.email", default=None)
    actor_api_key = serializers.CharField(source="actor_api_key.prefix", default=None)
    target_type = serializers.CharField()
    target_id = serializers.CharField()
    data = serializers.JSONField()
    ip_address = serializers.CharField()
    created_at = serializers.DateTimeField()


class AuditEventListApi(APIView):
    pagination_class = Pagination

    @extend_schema(
        responses={200: AuditEventOutputSerializer(many=True)},
        parameters=[OpenApiParameter("action", str, description="Only events with this action, e.g. api_key.revoked.")],
    )
    def get(self, request, org: str):
        caller = caller_from_request(request)
        organization = selectors.organization_for_caller(caller=caller, slug=org, min_role=Role.ADMIN)
        events = selectors.audit_events_of(organization=organization)
        action = request.query_params.get("action")
        if action:
            events = events.filter(action=action)
        return paginated(request, self, events, AuditEventOutputSerializer)
