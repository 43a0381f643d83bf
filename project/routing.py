from django.urls import re_path

from project.consumers import RoomConsumer

websocket_urlpatterns = [
    re_path(r"^ws/rooms/(?P<room>[A-Za-z0-9_.-]{1,64})/$", RoomConsumer.as_asgi()),
]
