"""Every Redis name of the wire contract (CONTRACT.md sections 1-3), behind a
key prefix: empty in production, unique per test. Mirrors the worker's
``queue::Names``."""

from __future__ import annotations

from dataclasses import dataclass

from .models import JobKind


@dataclass(frozen=True)
class Keys:
    """Builds stream and key names from the contract's fixed names."""

    prefix: str = ""

    def queue(self, kind: JobKind) -> str:
        """The queue a job kind is enqueued on."""
        if kind is JobKind.DEPLOY:
            return self.prefix + "ansible:deploy:queue"
        return self.prefix + "provisioner:queue"

    def result_key(self, kind: JobKind, request_id: str) -> str:
        """``deploy:result:<id>`` or ``provisioner:result:<id>`` (kept an hour)."""
        if kind is JobKind.DEPLOY:
            return f"{self.prefix}deploy:result:{request_id}"
        return f"{self.prefix}provisioner:result:{request_id}"

    def result_stream(self, kind: JobKind) -> str:
        """``deploy:results`` or ``provisioner:results``."""
        if kind is JobKind.DEPLOY:
            return self.prefix + "deploy:results"
        return self.prefix + "provisioner:results"

    def dead_letters(self) -> str:
        """The dead-letter stream ``infra:dead``."""
        return self.prefix + "infra:dead"

    def events(self, request_id: str) -> str:
        """A job's progress stream ``job:events:<request_id>``."""
        return f"{self.prefix}job:events:{request_id}"

    def unprefixed(self, name: str) -> str:
        """``name`` without this prefix; unchanged when it lacks it."""
        return name[len(self.prefix) :] if name.startswith(self.prefix) else name

    def kind_of_queue(self, name: str) -> JobKind | None:
        """The job kind whose queue ``name`` is, if it is one of ours."""
        for kind in JobKind:
            if self.queue(kind) == name:
                return kind
        return None
