from celery import shared_task

from inference import records


@shared_task(name="inference.drain_prediction_records", acks_late=True, ignore_result=True)
def drain_prediction_records() -> int:
    return records.drain_stream()


from inference.batch.tasks import *  # noqa
