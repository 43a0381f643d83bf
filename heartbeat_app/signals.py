"""Django signals sent by heartbeat_app.

Every signal is sent with ``asend_robust`` from the event loop: async receivers
run there, sync receivers in a thread (so they may use the ORM); a receiver that
raises is logged and never breaks a session.
"""

from django.dispatch import Signal

# A session was accepted and greeted. kwargs: consumer, session (SessionState).
session_opened = Signal()

# A session was silent past interval + timeout and is being closed with 4408.
# kwargs: consumer, session, silence (seconds).
zombie_detected = Signal()

# A session ended, whatever the cause. kwargs: consumer, session, code, reason.
session_closed = Signal()

# A member (user key) got its first session in a room. kwargs: room, key, meta.
member_joined = Signal()

# A member's last session left a room. kwargs: room, key, meta, reason.
member_left = Signal()
