"""Regression experiments compare prediction errors (MAE, RMSE), not the mean true value.

`mean_value` averaged the true values sent as feedback, which says nothing about the
predictions; its experiments become `mae` experiments.
"""

from django.db import migrations, models


def mean_value_to_mae(apps, schema_editor):
    apps.get_model("inference", "Experiment").objects.filter(metric="mean_value").update(metric="mae")


def mae_to_mean_value(apps, schema_editor):
    apps.get_model("inference", "Experiment").objects.filter(metric__in=["mae", "rmse"]).update(metric="mean_value")


class Migration(migrations.Migration):
    dependencies = [
        ("inference", "0006_batch_job_quota_rows"),
    ]

    operations = [
        migrations.RunPython(mean_value_to_mae, mae_to_mean_value),
        migrations.AlterField(
            model_name="experiment",
            name="metric",
            field=models.CharField(
                choices=[("accuracy", "Accuracy"), ("mae", "Mean absolute error"), ("rmse", "Root mean squared error")],
                default="accuracy",
                max_length=12,
            ),
        ),
    ]
