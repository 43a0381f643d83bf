"""ASGI app of the benchmark servers: the demo's routes plus /ws/bare/ and /ws/peerdb/."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchproj.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import re_path  # noqa: E402

from benchproj.consumers import BareConsumer, PeerDbConsumer  # noqa: E402
from project.routing import websocket_urlpatterns  # noqa: E402

# The same middleware stack as the demo for every route, so only the consumer differs.
application = ProtocolTypeRouter({
    "http": django_asgi_app,
    "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter([
        *websocket_urlpatterns,
        re_path(r"^ws/bare/$", BareConsumer.as_asgi()),
        re_path(r"^ws/peerdb/$", PeerDbConsumer.as_asgi()),
    ]))),
})
