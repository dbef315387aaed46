"""OpenAPI descriptions of the platform's own authentication schemes (drf-spectacular)."""
from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme
from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": "An API key `mh_<prefix>_<secret>`; also accepted as `Authorization: Bearer <key>`.",
        }


class JwtScheme(SimpleJWTScheme):
    target_class = "accounts.authentication.JwtAuthentication"
    name = "jwtAuth"
