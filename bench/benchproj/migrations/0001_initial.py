from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = []

    operations = [
        migrations.CreateModel(
            name="PeerPresence",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True,
                                           serialize=False, verbose_name="ID")),
                ("channel_name", models.CharField(max_length=255, unique=True)),
                ("room", models.CharField(max_length=80)),
                ("last_seen", models.DateTimeField()),
            ],
        ),
    ]
