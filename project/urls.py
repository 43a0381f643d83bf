from django.contrib import admin
from django.urls import path

import heartbeat_app.views
from project import views

urlpatterns = [
    path("", views.index, name="index"),
    path("metrics", heartbeat_app.views.metrics),
    # Before admin.site.urls, which would take any admin/<app_label>/ path.
    path("admin/heartbeat_app/metrics/", heartbeat_app.views.metrics_page,
         name="heartbeat_metrics"),
    path("admin/", admin.site.urls),
]
