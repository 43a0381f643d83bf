"""The demo's ASGI application plus a consumer that raises on demand, for the fault suite.

``/ws/crash/<room>/`` is the demo room consumer, except that ``{"type": "crash"}``
makes its handler raise, as a bug in a user's consumer would.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import re_path  # noqa: E402

from project.consumers import RoomConsumer  # noqa: E402
from project.routing import websocket_urlpatterns  # noqa: E402


class CrashingRoomConsumer(RoomConsumer):
    """The demo consumer, with a handler that raises on ``{"type": "crash"}``."""

    async def receive_json(self, content, **kwargs):
        if isinstance(content, dict) and content.get("type") == "crash":
            raise RuntimeError("the consumer raised on purpose")
        await super().receive_json(content, **kwargs)


application = ProtocolTypeRouter({
    "http": django_asgi_app,
    "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter([
        re_path(r"^ws/crash/(?P<room>[A-Za-z0-9_.-]{1,64})/$", CrashingRoomConsumer.as_asgi()),
        *websocket_urlpatterns,
    ]))),
})
