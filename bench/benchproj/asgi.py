"""ASGI app of the benchmark servers: the demo's routes plus /ws/bare/, /ws/baregroup/<room>/
and /ws/peerdb/, behind the demo's middleware stack (AdmissionMiddleware outermost).

BENCH_GC_THRESHOLD="a,b,c" sets gc.set_threshold(a, b, c) at start. With BENCH_GC_LOG=1
every full (generation 2) garbage collection longer than 10 ms is
logged as "gc gen2 pause <ms> ms", so a benchmark can tell GC stalls from other ones.
BENCH_STALL_LOG=<file> records where the event loop stalls (stalls.py).
BENCH_TRACEMALLOC=<file> traces allocations, snapshots on SIGUSR2 (memprof.py).
"""

import gc
import os
import sys
import time

if os.environ.get("BENCH_TRACEMALLOC"):  # before Django: every allocation of the app traced
    from .memprof import install

    install(os.environ["BENCH_TRACEMALLOC"])

from django.core.asgi import get_asgi_application  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", f"{__package__}.settings")
django_asgi_app = get_asgi_application()

if os.environ.get("BENCH_GC_THRESHOLD"):
    # A process-level knob for the capacity runs, e.g. "50000,20,100".
    gc.set_threshold(*(int(x) for x in os.environ["BENCH_GC_THRESHOLD"].split(",")))

if os.environ.get("BENCH_GC_LOG"):
    _gc_started = [0.0]

    def _gc_timer(phase, info):
        if info.get("generation") != 2:
            return
        if phase == "start":
            _gc_started[0] = time.perf_counter()
        else:
            pause = (time.perf_counter() - _gc_started[0]) * 1000
            if pause > 10:
                print(f"gc gen2 pause {pause:.1f} ms", file=sys.stderr, flush=True)

    gc.callbacks.append(_gc_timer)

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import re_path  # noqa: E402

from heartbeat_app.admission import AdmissionMiddleware  # noqa: E402
from project.routing import websocket_urlpatterns  # noqa: E402

from .consumers import BareConsumer, BareGroupConsumer, PeerDbConsumer  # noqa: E402

# The same middleware stack as the demo (project/asgi.py) for every route, admission gate
# outermost, so only the consumer differs.
application = ProtocolTypeRouter({
    "http": django_asgi_app,
    "websocket": AdmissionMiddleware(AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter([
        *websocket_urlpatterns,
        re_path(r"^ws/bare/$", BareConsumer.as_asgi()),
        re_path(r"^ws/baregroup/(?P<room>[A-Za-z0-9_.-]{1,64})/$", BareGroupConsumer.as_asgi()),
        re_path(r"^ws/peerdb/$", PeerDbConsumer.as_asgi()),
    ])))),
})

if os.environ.get("BENCH_STALL_LOG"):  # where the loop stalls (bench/benchproj/stalls.py)
    from .stalls import traced  # noqa: E402

    application = traced(application, os.environ["BENCH_STALL_LOG"],
                         float(os.environ.get("BENCH_STALL_MS", "50")))

if os.environ.get("BENCH_SWITCH_INTERVAL"):  # sys.setswitchinterval, for paired runs
    sys.setswitchinterval(float(os.environ["BENCH_SWITCH_INTERVAL"]))
