"""Usage rollups keep a DDSketch of their latencies instead of a quantile grid.

Rows written before carry only their grid: each becomes a sketch of its grid values, each
weighted by its share of the row's requests (as close as the grid was). The usage cursor
starts over, so the next rollup run computes every hour whose records are still kept, and
its day, from the records themselves.
"""

from ddsketch import LogarithmicMapping
from django.db import migrations, models

RELATIVE_ACCURACY = 0.01
OLD_GRID = tuple(i / 100 for i in range(100)) + tuple(0.99 + i / 1000 for i in range(1, 10)) + (1.0,)
BATCH = 2000


def sketch_of_grid(requests: int, grid_values: list[float], mapping: LogarithmicMapping) -> dict:
    if not requests or len(grid_values) != len(OLD_GRID):
        return {}
    bins: dict[str, float] = {}
    zero_count = 0.0
    for i in range(1, len(OLD_GRID)):
        weight = requests * (OLD_GRID[i] - OLD_GRID[i - 1])
        value = grid_values[i]
        if value > mapping.min_possible:
            key = str(mapping.key(value))
            bins[key] = bins.get(key, 0.0) + weight
        else:
            zero_count += weight
    return {"bins": bins, "zero_count": zero_count}


def grids_to_sketches(apps, schema_editor):
    UsageRollup = apps.get_model("analytics", "UsageRollup")
    mapping = LogarithmicMapping(RELATIVE_ACCURACY)
    batch = []
    for row in UsageRollup.objects.only("id", "requests", "latency_quantiles").iterator(chunk_size=BATCH):
        row.latency_sketch = sketch_of_grid(row.requests, row.latency_quantiles or [], mapping)
        batch.append(row)
        if len(batch) >= BATCH:
            UsageRollup.objects.bulk_update(batch, ["latency_sketch"])
            batch = []
    if batch:
        UsageRollup.objects.bulk_update(batch, ["latency_sketch"])
    RollupCursor = apps.get_model("analytics", "RollupCursor")
    RollupCursor.objects.filter(name="usage").update(last_record_id=0, settled_record_id=0)


class Migration(migrations.Migration):
    dependencies = [
        ("analytics", "0003_replay"),
    ]

    operations = [
        migrations.AddField(
            model_name="usagerollup",
            name="latency_sketch",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.RunPython(grids_to_sketches, migrations.RunPython.noop, elidable=True),
        migrations.RemoveField(
            model_name="usagerollup",
            name="latency_quantiles",
        ),
    ]
