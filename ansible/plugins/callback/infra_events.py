# Callback plugin of infra-service: live task progress for the worker.
#
# The worker enables this plugin for its runs (ANSIBLE_CALLBACKS_ENABLED,
# ANSIBLE_CALLBACK_PLUGINS) next to the default stdout callback, and names
# a file in the run's private directory in INFRA_EVENTS_FILE. Each task start
# and each per-host task result becomes one JSON line there, which the worker
# reads while the playbook runs, redacts, numbers and publishes to
# job:events:<request_id>. Without INFRA_EVENTS_FILE (a run by hand) the
# plugin does nothing.
#
# A line holds names only: event, play, task, host, changed, and for
# failures a short message (the worker redacts it; none under no_log).
# Never task arguments or results. A write that fails turns the plugin off
# for the rest of the run: progress must never fail or slow a playbook.
#
# When the playbook ends, the data its tasks handed back with set_stats
# (run-wide, per_host: false) is written as one JSON object to the file
# named by INFRA_STATS_FILE: structured results such as the revision a
# deploy checked out, read by the worker instead of scraping output.

from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: infra_events
    type: notification
    short_description: write task progress as JSON lines for infra-service
    description:
      - Appends one JSON line per task start and per task result to the file
        named by the environment variable C(INFRA_EVENTS_FILE).
      - Does nothing when the variable is unset.
      - Writes the run-wide set_stats data as one JSON object to the file
        named by C(INFRA_STATS_FILE) when the playbook ends.
    requirements:
      - enabled through C(callbacks_enabled)
"""

EVENTS_FILE_VAR = "INFRA_EVENTS_FILE"
STATS_FILE_VAR = "INFRA_STATS_FILE"
# Bounds on what one line may carry; names longer than this are cut.
MAX_NAME = 512
MAX_MESSAGE = 300


def _cut(text, limit):
    if text is None:
        return None
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _payload(result):
    """The result dictionary on ansible-core 2.19+ and before."""
    payload = getattr(result, "result", None)
    if payload is None:
        payload = getattr(result, "_result", None)
    return payload if isinstance(payload, dict) else {}


def _host(result):
    host = getattr(result, "host", None) or getattr(result, "_host", None)
    return host.get_name() if host is not None else None


def _task(result):
    return getattr(result, "task", None) or getattr(result, "_task", None)


class CallbackModule(CallbackBase):
    """Task starts and results as JSON lines in INFRA_EVENTS_FILE."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "infra_events"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._fd = None
        self._play = None
        path = os.environ.get(EVENTS_FILE_VAR)
        if not path:
            return
        try:
            # The worker creates the file (0600); appending never blocks.
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError as error:
            self._display.warning(f"infra_events: cannot open the events file: {error.strerror}")

    def _emit(self, event, task, host=None, changed=None, message=None, ignored=False):
        if self._fd is None:
            return
        line = {
            "event": event,
            "play": _cut(self._play, MAX_NAME),
            "task": _cut(task.get_name() if task is not None else None, MAX_NAME),
            "host": _cut(host, MAX_NAME),
            "changed": changed,
        }
        if message is not None:
            line["message"] = _cut(message, MAX_MESSAGE)
        if ignored:
            line["ignored"] = True
        data = (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8", "replace")
        try:
            os.write(self._fd, data)
        except OSError as error:
            self._display.warning(f"infra_events: writing progress failed, stopping: {error.strerror}")
            self._close()

    def _close(self):
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def _result(self, event, result, with_message=False, ignored=False):
        payload = _payload(result)
        task = _task(result)
        message = None
        hidden = payload.get("_ansible_no_log") or getattr(task, "no_log", False) is True
        if with_message and not hidden:
            message = payload.get("msg")
        self._emit(event, task, _host(result), bool(payload.get("changed", False)), message, ignored)

    def v2_playbook_on_play_start(self, play):
        self._play = play.get_name()

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._emit("playbook_on_task_start", task)

    def v2_playbook_on_handler_task_start(self, task):
        self._emit("playbook_on_handler_task_start", task)

    def v2_runner_on_ok(self, result):
        self._result("runner_on_ok", result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._result("runner_on_failed", result, with_message=True, ignored=ignore_errors)

    def v2_runner_on_skipped(self, result):
        self._result("runner_on_skipped", result)

    def v2_runner_on_unreachable(self, result):
        self._result("runner_on_unreachable", result, with_message=True)

    def v2_playbook_on_stats(self, stats):
        self._close()
        self._write_stats(stats)

    def _write_stats(self, stats):
        path = os.environ.get(STATS_FILE_VAR)
        custom = getattr(stats, "custom", None) or {}
        data = custom.get("_run") or {}
        if not path or not isinstance(data, dict):
            return
        text = json.dumps(data, ensure_ascii=False, default=str).encode("utf-8", "replace")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, text)
            finally:
                os.close(fd)
        except OSError as error:
            self._display.warning(f"infra_events: writing the stats failed: {error.strerror}")
