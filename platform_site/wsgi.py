import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "platform_site.settings")
django_application = get_wsgi_application()

from platform_site.dispatch import PredictionDispatcher  # noqa: E402  (needs the app loaded)
from platform_site.startup import warm_up  # noqa: E402

application = PredictionDispatcher(django_application)
warm_up()
