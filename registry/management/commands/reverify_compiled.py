"""``manage.py reverify_compiled``: check every stored compiled form against scikit-learn again.

Run at each deploy (the Procfile's release phase and kubernetes/base/migrate-job.yaml, after
``migrate``) and by the test suite: a new ONNX Runtime or scikit-learn that changes one answer
(as onnxruntime 1.26.0 once did for RandomForestClassifier) fails the deploy here, and the
version it broke is served by scikit-learn from then on, instead of users getting wrong answers.
Each check runs in the upload sandbox, never in this process: it loads tenants' files.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from registry import artifacts
from registry.models import ModelVersion


class Command(BaseCommand):
    help = "Re-verify every version's compiled form against scikit-learn with the installed runtimes; exit 1 if any fails."

    def handle(self, *args, **options) -> None:
        failed = []
        versions = (
            ModelVersion.objects.exclude(compiled_sha256="").select_related("registered_model__organization").order_by("id")
        )
        count = 0
        for version in versions.iterator():
            count += 1
            outcome = artifacts.recheck_compiled(version)
            status = "ok" if outcome["passed"] else "FAILED"
            note = " (new compiled bytes stored)" if outcome["changed"] and outcome["passed"] else ""
            self.stdout.write(f"{status} {version}: {outcome['reason']}{note}")
            if not outcome["passed"]:
                failed.append(str(version))
        if failed:
            raise CommandError(
                f"{len(failed)} of {count} compiled versions no longer match scikit-learn and are now served by it: "
                f"{', '.join(failed)}"
            )
        self.stdout.write(f"{count} compiled versions re-verified.")
