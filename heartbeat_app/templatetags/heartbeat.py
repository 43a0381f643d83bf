"""``{% load heartbeat %}``: the tag that includes the bundled browser client."""

from django import template
from django.templatetags.static import static
from django.utils.html import format_html

register = template.Library()

CLASSIC = "heartbeat_app/heartbeat.js"
MODULE = "heartbeat_app/heartbeat.mjs"


@register.simple_tag
def heartbeat_script(module: bool = False, defer: bool = False, nonce: str | None = None) -> str:
    """Render the ``<script>`` tag of the client: ``window.HeartbeatSocket``, or the ES module.

    The URL comes from the staticfiles storage, so hashed names (``ManifestStaticFilesStorage``)
    and a CDN ``STATIC_URL`` work. ``nonce`` is for a Content-Security-Policy.
    """
    attrs = format_html(' nonce="{}"', nonce) if nonce else ""
    if module:
        return format_html('<script type="module" src="{}"{}></script>', static(MODULE), attrs)
    if defer:
        attrs = format_html("{} defer", attrs)
    return format_html('<script src="{}"{}></script>', static(CLASSIC), attrs)
