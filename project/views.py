import re

from django.shortcuts import render

_ROOM = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def index(request):
    """The demo page for one room (``?room=NAME``, default ``lobby``)."""
    room = request.GET.get("room", "lobby")
    if not _ROOM.fullmatch(room):
        room = "lobby"
    return render(request, "index.html", {"room": room})
