from django.urls import re_path

from project.consumers import RoomConsumer

websocket_urlpatterns = [
    # Any segment: the consumer refuses a bad room name itself (invalid_room, 4400), which
    # a client can tell from a network fault; no route at all would be an HTTP 500.
    re_path(r"^ws/rooms/(?P<room>[^/]{1,200})/$", RoomConsumer.as_asgi()),
]
