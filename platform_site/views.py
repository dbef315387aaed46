from django.http import HttpRequest, HttpResponse

from platform_site.errors import NotFound
from platform_site.problems import problem_response


def api_not_found(request: HttpRequest, rest: str) -> HttpResponse:
    """Unknown paths under /api/ answer problem+json, like every other API error."""
    return problem_response(NotFound(f"There is no API endpoint at /api/{rest}."))
