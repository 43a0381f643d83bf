"""The ``heartbeat_script`` tag, rendered through Django's template engine."""

import pytest
from django.template import Context, Template, TemplateSyntaxError
from django.test import override_settings

from heartbeat_app.templatetags.heartbeat import CLASSIC, MODULE


def render(source: str, **context) -> str:
    return Template("{% load heartbeat %}" + source).render(Context(context)).strip()


def test_classic_script_tag():
    assert render("{% heartbeat_script %}") == (
        '<script src="/static/heartbeat_app/heartbeat.js"></script>'
    )


def test_module_script_tag():
    assert render("{% heartbeat_script module=True %}") == (
        '<script type="module" src="/static/heartbeat_app/heartbeat.mjs"></script>'
    )


def test_defer_and_nonce():
    html = render('{% heartbeat_script defer=True nonce=n %}', n="abc123")
    assert html == '<script src="/static/heartbeat_app/heartbeat.js" nonce="abc123" defer></script>'


def test_nonce_is_escaped():
    html = render("{% heartbeat_script nonce=n %}", n='"><script>alert(1)</script>')
    assert "<script>alert" not in html
    assert "&quot;&gt;" in html


@override_settings(STATIC_URL="https://cdn.example.com/assets/")
def test_url_comes_from_the_staticfiles_storage():
    assert render("{% heartbeat_script %}") == (
        '<script src="https://cdn.example.com/assets/heartbeat_app/heartbeat.js"></script>'
    )


@override_settings(STORAGES={
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "tests.test_templatetags.HashedStorage"},
})
def test_hashed_names_from_a_manifest_storage():
    assert render("{% heartbeat_script module=True %}") == (
        '<script type="module" src="/static/heartbeat_app/heartbeat.0123abcd.mjs"></script>'
    )


def test_unknown_option_is_a_template_error():
    with pytest.raises(TemplateSyntaxError):
        render("{% heartbeat_script colour=1 %}")


def test_the_static_files_exist_where_the_tag_points():
    from django.contrib.staticfiles import finders

    assert finders.find(CLASSIC)
    assert finders.find(MODULE)


class HashedStorage:
    """A stand-in for ManifestStaticFilesStorage: hashed names without a collectstatic run."""

    def url(self, name):
        stem, dot, ext = name.rpartition(".")
        return f"/static/{stem}.0123abcd.{ext}"
