from channels.routing import URLRouter
from django.urls import re_path

from .consumers import ChatConsumer

application = URLRouter([
    re_path(r"^ws/chat/(?P<room>[A-Za-z0-9_.-]{1,64})/$", ChatConsumer.as_asgi()),
])
