from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response


class Pagination(LimitOffsetPagination):
    default_limit = 50
    max_limit = 500


def paginated(request, view, queryset, serializer_class) -> Response:
    """One page of `queryset` as `{count, next, previous, results}`, for APIView list endpoints."""
    paginator = Pagination()
    page = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response(serializer_class(page, many=True).data)
