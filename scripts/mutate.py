#!/usr/bin/env python3
"""Switch each promised behaviour off in a scratch copy and check that the tests notice.

Every README guarantee and every documented config key has at least one
mutation here: a small edit of ``ipcpool/`` that breaks exactly that promise
(the key's value ignored, a guard removed, a log phrase changed), and the test
node ids that must then fail. For each mutation the script

1. copies the repository's files (``git ls-files``, tracked and untracked but
   not ignored) into a fresh folder under the system temp dir,
2. replaces the mutation's exact old text, which must occur exactly once, with
   the new text (a mutation may make several such edits in one file, when a
   behaviour has two guards that only fail together),
3. runs only the named tests there, with ``PYTHONPATH`` pointing at the copy
   (the tests start ``python -m ipcpool`` with the copy's code, see
   tests/conftest.py), and
4. reports the mutation *caught* when those tests fail, *survived* when they pass,
   then removes the copy.

Before any mutation, the same tests run once on an unmutated copy: a test that
fails there proves nothing. The exit status is non-zero when any mutation
survives, any old text is missing or ambiguous, or the baseline fails. A
markdown table (mutation | tests | caught) ends the output.

    python scripts/mutate.py                  # everything, one mutation at a time
    python scripts/mutate.py --list           # the table of mutations
    python scripts/mutate.py --only prefetch-unlimited --only ack-jitter-ignored
    python scripts/mutate.py -j 2             # two mutations at once (this machine has 2 cores)

tests/test_mutations_apply.py checks, in the normal suite, that every old text
still occurs exactly once and every named test exists, so code that moves must
bring this table along.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
TEST_TIMEOUT = 180  # seconds per test (pytest-timeout), so a mutation that makes a test hang still ends it
RUN_TIMEOUT = 1200  # seconds for one mutation's whole pytest run


class Mutation(NamedTuple):
    """One behaviour switched off: ``old`` becomes ``new`` in ``file``; ``tests`` must then fail.

    ``old`` and ``new`` are either one string each or tuples of the same length
    (several edits in the same file, applied together).
    """

    name: str
    file: str
    old: str | tuple[str, ...]
    new: str | tuple[str, ...]
    tests: tuple[str, ...]
    promise: str = ""

    def edits(self) -> list[tuple[str, str]]:
        olds = (self.old,) if isinstance(self.old, str) else self.old
        news = (self.new,) if isinstance(self.new, str) else self.new
        if len(olds) != len(news):
            raise ValueError(f"{self.name}: {len(olds)} old texts but {len(news)} new ones")
        return list(zip(olds, news, strict=True))


# the pool (ipcpool/pool/)
SUP = "ipcpool/pool/supervisor.py"
DISPATCH = "ipcpool/pool/dispatch.py"
ACCOUNTING = "ipcpool/pool/accounting.py"
LIFECYCLE = "ipcpool/pool/lifecycle.py"
LIMITS = "ipcpool/pool/limits.py"
HANDLE = "ipcpool/pool/handle.py"
RELOAD = "ipcpool/pool/reload.py"
PIPELINE = "ipcpool/pool/pipeline.py"
CLIENT = "ipcpool/client.py"
RETRY = "ipcpool/retry.py"
HANDLERS = "ipcpool/handlers.py"
LOCALROOT = "ipcpool/localroot.py"
SEAM = "ipcpool/transport/__init__.py"
PROBES = "ipcpool/ops/probes.py"
TERMINAL = "ipcpool/ops/terminal.py"
# the spool backend (ipcpool/transport/spool/)
SOURCE = "ipcpool/transport/spool/source.py"
HOUSEKEEPING = "ipcpool/transport/spool/housekeeping.py"
SPOOL = "ipcpool/transport/spool/spool.py"
WRITES = "ipcpool/transport/spool/writes.py"
CLAIMS = "ipcpool/transport/spool/claims.py"
LAYOUT = "ipcpool/transport/spool/layout.py"
STORE = "ipcpool/transport/spool/store.py"
WATCHER = "ipcpool/transport/spool/watcher.py"
# the Redis backend (ipcpool/transport/redis/)
R_SOURCE = "ipcpool/transport/redis/source.py"
R_CONN = "ipcpool/transport/redis/connection.py"
R_OUTBOX = "ipcpool/transport/redis/outbox.py"
R_STORE = "ipcpool/transport/redis/store.py"
R_SCRIPTS = "ipcpool/transport/redis/scripts.py"
R_INGEST = "ipcpool/transport/bridge/ingest.py"
SCHED = "ipcpool/schedule.py"  # [[schedule]]: parsing, due times
SCHEDULER = "ipcpool/pool/scheduler.py"  # the supervisor's timetable
S_OUTBOX = "ipcpool/transport/spool/outbox.py"
D_SPOOL = "ipcpool/transport/spool/delayed.py"  # delayed/ and its heaps
R_DELAYS = "ipcpool/transport/redis/delays.py"  # the delayed sorted sets
ORDERING = "ipcpool/ordering.py"  # sequence keys and each sequence's line
SEQUENCES = "ipcpool/transport/spool/sequences.py"
R_LINES = "ipcpool/transport/redis/lines.py"

T_LOST = "tests/test_lost_events.py"
T_LIVE = "tests/test_live_config.py"
T_DRAIN = "tests/test_drain.py"
T_PROM = "tests/test_promises.py"
T_SUPV = "tests/test_supervision.py"
T_CLI = "tests/test_cli.py"
T_CLIENT = "tests/test_client.py"
T_DUR = "tests/test_durability.py"
T_RETRY = "tests/test_retry.py"
T_OPER = "tests/test_operating.py"
T_REDIS = "tests/test_redis.py"
T_TRANSPORTS = "tests/test_transports.py"
T_HTTP = "tests/test_http.py"
T_RELOAD = "tests/test_reload.py"
T_JSONLOG = "tests/test_json_logs.py"
T_TERM = "tests/test_terminal_output.py"
T_SCHED = "tests/test_schedule.py"
T_TIME = "tests/test_time.py"
T_ORDER = "tests/test_ordering.py"
T_UNITS = "tests/test_pool_units.py"

_HANDLER_RETRY_WAIT = ("        wait=_backoff(policy.delay, policy.backoff, policy.max_delay),\n"
                       "        retry=tenacity.retry_if_exception_type(Exception),\n"
                       "        before_sleep=before_sleep,\n"
                       "        reraise=True,\n"
                       "        **kwargs,")
_SPOOL_FROM_CONFIG = ("        return cls(spool.root, durability=spool.durability, mode=spool.mode, "
                      "inboxes=spool.inboxes,\n"
                      "                   max_message_bytes=spool.max_message_bytes, private_staging=private_staging)")


def _spool_from_config(**replace: str) -> str:
    text = _SPOOL_FROM_CONFIG
    for key, value in replace.items():
        text = text.replace(f"{key}=spool.{key}", f"{key}={value}") if key != "root" else \
            text.replace("cls(spool.root,", f"cls({value},")
    return text


MUTATIONS: tuple[Mutation, ...] = (
    # -- the issue's list: each of these once passed the whole relevant suite ---------------------------------------
    Mutation("periodic-rescans-disabled", SOURCE,
             "        if now >= self.next_rescan:\n            self.next_rescan = now + self.config.spool.",
             "        if self.next_rescan == 0.0:\n            self.next_rescan = now + self.config.spool.",
             (f"{T_LOST}::test_periodic_rescans_find_what_no_event_announced",),
             "guarantee 5: rescan every rescan_interval"),
    Mutation("new-group-folder-event-ignored", SOURCE,
             "                if self.spool.folders.is_group_dir(group):\n                    self.add_group(group)",
             "                if self.spool.folders.is_group_dir(group):\n                    pass",
             (f"{T_LOST}::test_a_group_folder_made_while_running_is_watched_at_once",),
             "[spool] groups: other group folders are picked up when they appear"),
    Mutation("new-group-folder-not-found-by-rescans", SOURCE,
             "            if group not in self.groups:\n                self.add_group(group)\n            else:",
             "            if group not in self.groups:\n                pass\n            else:",
             (f"{T_LOST}::test_inotify_overflow_triggers_a_rescan_and_nothing_is_lost",),
             "[spool] groups: picked up when they appear, even when their event was lost"),
    Mutation("polling-watcher-replaced-by-inotify", SOURCE,
             '                                     polling=self.config.spool.watcher == "polling",',
             "                                     polling=False,",
             (f"{T_LOST}::test_the_configured_watcher_is_the_one_running[polling]",),
             "[spool] watcher = polling"),
    Mutation("ack-jitter-ignored", RETRY,
             "    if policy.jitter > 0:", "    if False:",
             (f"{T_RETRY}::test_ack_waits_with_jitter_stay_in_range",),
             "[ack] jitter"),
    Mutation("housekeeping-deletes-fresh-tmp-and-responses", HOUSEKEEPING,
             "(RESPONSES, config.spool.response_retention),\n                         (TMP, config.spool.tmp_max_age)",
             "(RESPONSES, -1e9),\n                         (TMP, -1e9)",
             (f"{T_DUR}::test_stale_temp_files_are_removed_by_housekeeping",
              f"{T_DUR}::test_old_acks_and_uncollected_responses_are_pruned"),
             "[spool] tmp_max_age / response_retention: only older files go"),
    Mutation("duplicate-not-re-acked", STORE,
             "            try:\n                spool.ledger.write_ack_named(group, ack_name(ack_id or \"\"))\n"
             "            except OSError:\n"
             "                pass  # the ack (or the held file that becomes it) is there already\n",
             "",
             (f"{T_CLIENT}::test_an_id_that_already_has_an_ack_is_not_handled_again",),
             "guarantee 3: removed and re-acked"),
    Mutation("shutdown-grace-unlimited", SUP,
             "        self.limits.drain_deadline = now + self.config.pool.shutdown_grace",
             '        self.limits.drain_deadline = float("inf")',
             (f"{T_DRAIN}::test_shutdown_grace_cuts_a_drain_short",),
             "[pool] shutdown_grace"),
    Mutation("prefetch-unlimited", SUP,
             "        self.dispatcher.dispatch(pool.ready_workers(), pool.config.pool.prefetch, booting=booting)",
             "        self.dispatcher.dispatch(pool.ready_workers(), 10**6, booting=booting)",
             (f"{T_DRAIN}::test_prefetch_bounds_what_each_worker_holds",),
             "[pool] prefetch"),
    # -- the issue's hollow and too-early assertions, shown able to fail -----------------------------------
    Mutation("redelivery-count-never-increases", SOURCE,
             "            taken.append((key[0], key[1], len(history) + 1 if history else 1))",
             "            taken.append((key[0], key[1], 1))",
             (f"{T_SUPV}::test_killed_worker_is_replaced_and_its_messages_redelivered",),
             "guarantee 2: what a dead worker held is redelivered (and counted)"),
    Mutation("already-running-exits-2", LOCALROOT,
             "            raise AlreadyRunning(",
             '            raise __import__("ipcpool.errors", fromlist=["ConfigError"]).ConfigError(',
             (f"{T_CLI}::test_second_run_on_the_same_root_refuses_at_once",),
             "exit code 1 when another supervisor already runs"),
    Mutation("invalid-group-names-accepted", "ipcpool/message.py",
             'GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\\Z")',
             'GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _-]{0,63}\\Z")',
             ("tests/test_hostile.py::test_invalid_group_names_are_never_used",),
             "group names: ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"),
    Mutation("health-ignores-a-dead-supervisor", "ipcpool/ops/health.py",
             '    if own is None and not (isinstance(pid, int) and pid_alive(pid, supervisor.get("createTime"))):',
             "    if own is None and not isinstance(pid, int):",
             (f"{T_SUPV}::test_health_follows_supervisor_and_stopped_worker",),
             "ipcpool health: exit 1 when the supervisor is not running"),
    Mutation("burst-not-split-evenly", DISPATCH,
             "        share = -(-(backlog + sum(load.values())) // (len(load) + booting))",
             "        share = backlog + sum(load.values())",
             (f"{T_SUPV}::test_a_burst_is_split_evenly_even_while_a_worker_is_still_booting",),
             "[pool] prefetch: a burst is split evenly across workers"),
    Mutation("forked-worker-keeps-siblings-and-epoll-keeps-the-dead", LIFECYCLE,
             ("            siblings = [fd for w in pool.workers for fd in (w.tasks.fd, w.results.fd, "
              "w.process.sentinel, w.pidfd)]",
              "            self._forget(worker)  # before its fds close"),
             ("            siblings: list[int | None] = []",
              "            pass  # before its fds close"),
             ("tests/test_compat.py::test_a_dead_forked_worker_leaves_the_supervisor_idle_not_spinning",),
             "compat: an idle supervisor sleeps after a forked worker died"),
    # -- README guarantees 1-6 ------------------------------------------------------------------------------
    Mutation("partial-file-quarantined-at-once", PIPELINE,
             "            if -FUTURE_MTIME_SLACK < time.time() - raw.mtime < self._settle:",
             "            if False:",
             (f"{T_CLI}::test_a_file_still_being_written_is_not_quarantined_and_is_handled_when_complete",
              "tests/test_e2e_basic.py::test_messages_from_every_kind_of_writer_are_handled_once_and_acked"),
             "guarantee 1: nothing partial is processed"),
    Mutation("processing-not-recovered-at-start", SOURCE,
             "        for name in self.spool.folders.scan_processing(group):", "        for name in []:",
             (f"{T_SUPV}::test_supervisor_sigkill_then_restart_loses_nothing",),
             "guarantee 2: on start, processing/ is moved back to messages/"),
    Mutation("requeue-overwrites-a-namesake", CLAIMS,
             "                rename_noreplace(source, self.inbox_path(group, target))\n"
             "                return target",
             "                os.rename(source, self.inbox_path(group, target))\n                return target",
             ("tests/test_regressions.py::test_requeue_never_replaces_a_different_message_with_the_same_name",),
             "guarantee 2: two files with the same name never overwrite each other"),
    Mutation("writers-temp-files-claimed", LAYOUT,
             '    return not base.startswith(".") and not base.endswith(".tmp")',
             '    return not base.startswith(".")',
             (f"{T_CLI}::test_files_queued_before_start_are_handled_and_dot_and_tmp_files_are_left_alone",),
             "guarantee 2: dot-files and *.tmp in messages/ are never touched"),
    Mutation("ack-ledger-ignored", PIPELINE,
             "        if ack is not None and store.is_acked(group, ack, holds=bool(self.shared[SLOT_ACK_HOLDS])):",
             "        if False:",
             (f"{T_CLIENT}::test_an_id_that_already_has_an_ack_is_not_handled_again",),
             "guarantee 3: an id that has an ack is not handled again"),
    Mutation("republish-in-flight-dropped", SOURCE,
             "        if key in self.taken or key in self.stranded:\n            self.blocked.add(key)\n"
             "        elif key not in self.pending:",
             "        if key in self.taken or key in self.stranded:\n            pass\n"
             "        elif key not in self.pending:",
             (f"{T_PROM}::test_a_republish_while_the_first_copy_is_in_a_workers_hands_waits_then_meets_its_ack",),
             "guarantee 3: a re-publish while in a worker's hands waits for it"),
    Mutation("republish-in-flight-never-released", SOURCE,
             "            self.blocked.discard(key)\n            self.pending[key] = self.clock()\n\n"
             "    def _retry_stranded",
             "            self.blocked.discard(key)\n\n    def _retry_stranded",
             (f"{T_PROM}::test_a_republish_while_the_first_copy_is_in_a_workers_hands_waits_then_meets_its_ack",),
             "guarantee 3: ... then meets its ack"),
    Mutation("no-supervisor-lock", LOCALROOT,
             "            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
             "        except BlockingIOError:\n            owner",
             "            pass\n        except BlockingIOError:\n            owner",
             (f"{T_CLI}::test_second_run_on_the_same_root_refuses_at_once",),
             "guarantee 4: one supervisor per root (a lock)"),
    Mutation("start-scan-removed", SOURCE,
             "        self._scan_group(group)\n        self._count_errors(group)\n\n    def _ensure_group",
             "        self._count_errors(group)\n\n    def _ensure_group",
             (f"{T_LOST}::test_messages_queued_before_start_are_found_by_the_start_scan",),
             "guarantee 5: watch, then scan at start"),
    Mutation("overflow-does-not-rescan", SOURCE,
             "                self.next_rescan = 0.0\n            elif kind == LOST",
             "                pass\n            elif kind == LOST",
             (f"{T_LOST}::test_inotify_overflow_triggers_a_rescan_and_nothing_is_lost",),
             "guarantee 5: rescan at once after an inotify overflow"),
    Mutation("handler-named-by-message-type", HANDLERS,
             "        handler = self._handlers.get(message.type)\n",
             '        handler = self._handlers.get(message.type) or (resolve(message.type) if ":" in message.type '
             'else None)\n',
             (f"{T_PROM}::test_a_message_can_never_name_its_handler",),
             "guarantee 6: handlers are named in config, never in messages"),
    Mutation("handler-named-by-envelope-key", PIPELINE,
             "        handler = self.handlers.lookup(message)\n",
             '        handler = (__import__("ipcpool.handlers", fromlist=["resolve"])'
             '.resolve(message.extra["handler"])\n'
             '                   if "handler" in message.extra else self.handlers.lookup(message))\n',
             (f"{T_PROM}::test_a_message_can_never_name_its_handler",),
             "guarantee 6: handlers are named in config, never in messages"),
    # -- [spool] ----------------------------------------------------------------------------------------------
    Mutation("root-key-ignored", SPOOL, _SPOOL_FROM_CONFIG, _spool_from_config(root='"data/ipc"'),
             ("tests/test_e2e_basic.py::test_messages_from_every_kind_of_writer_are_handled_once_and_acked",),
             "[spool] root"),
    Mutation("groups-not-made-at-start", SOURCE,
             "        for group in self.config.spool.groups:\n            self._ensure_group(group)",
             "        for group in ():\n            self._ensure_group(group)",
             (f"{T_LIVE}::test_ipcpool_root_overrides_the_configured_root_and_groups_are_made_at_start",),
             "[spool] groups: created at start"),
    Mutation("format-key-ignored", CLIENT,
             "            format=cfg.spool.format,", '            format="json",',
             (f"{T_LIVE}::test_spool_format_is_what_senders_write",),
             "[spool] format"),
    Mutation("durability-key-ignored", SPOOL, _SPOOL_FROM_CONFIG, _spool_from_config(durability='"process"'),
             (f"{T_LIVE}::test_power_durability_fsyncs_the_file_then_its_folder[power]",),
             "[spool] durability"),
    Mutation("power-without-folder-fsync", WRITES,
             "            os.fsync(fd)\n        finally:\n            os.close(fd)\n\n    def publish",
             "            pass\n        finally:\n            os.close(fd)\n\n    def publish",
             (f"{T_LIVE}::test_power_durability_fsyncs_the_file_then_its_folder[power]",),
             "[spool] durability = power: fsync ... then folder"),
    Mutation("power-without-file-fsync", WRITES,
             "            if self.fsync:\n                os.fsync(fd)\n        finally:",
             "            if False:\n                os.fsync(fd)\n        finally:",
             (f"{T_LIVE}::test_power_durability_fsyncs_the_file_then_its_folder[power]",),
             "[spool] durability = power: fsync file ..."),
    Mutation("mode-key-ignored", SPOOL, _SPOOL_FROM_CONFIG, _spool_from_config(mode='"private"'),
             ("tests/test_spool.py::test_from_config",),
             "[spool] mode"),
    Mutation("native-watcher-replaced-by-polling", SOURCE,
             '                                     polling=self.config.spool.watcher == "polling",',
             "                                     polling=True,",
             (f"{T_LOST}::test_the_configured_watcher_is_the_one_running[native]",),
             "[spool] watcher = native"),
    Mutation("settle-time-ignored", PIPELINE,
             "        self._settle = config.spool.settle_time", "        self._settle = 0.0",
             (f"{T_CLI}::test_a_file_still_being_written_is_not_quarantined_and_is_handled_when_complete",),
             "[spool] settle_time"),
    Mutation("rescan-interval-ignored", SOURCE,
             ("            self.next_rescan = now + self.config.spool.rescan_interval\n            self.rescan()",
              "        self.next_rescan = self.clock() + self.config.spool.rescan_interval\n        return recovered"),
             ("            self.next_rescan = now + 3600.0\n            self.rescan()",
              "        self.next_rescan = self.clock() + 3600.0\n        return recovered"),
             (f"{T_LOST}::test_periodic_rescans_find_what_no_event_announced",),
             "[spool] rescan_interval"),
    Mutation("max-message-bytes-ignored", SPOOL, _SPOOL_FROM_CONFIG,
             _spool_from_config(max_message_bytes="1024 * 1024"),
             ("tests/test_hostile.py::test_oversize_message_is_refused_before_reading",),
             "[spool] max_message_bytes"),
    Mutation("max-queued-ignored", SEAM,
             "mode=spool.mode, max_queued=spool.max_queued)", "mode=spool.mode, max_queued=0)",
             ("tests/test_errors_cli.py::test_cli_send_refuses_when_the_queue_is_full",),
             "[spool] max_queued"),
    Mutation("tmp-max-age-ignored", HOUSEKEEPING,
             "(TMP, config.spool.tmp_max_age)", "(TMP, 3600.0)",
             (f"{T_DUR}::test_stale_temp_files_are_removed_by_housekeeping",),
             "[spool] tmp_max_age"),
    Mutation("response-retention-ignored", HOUSEKEEPING,
             "(RESPONSES, config.spool.response_retention)", "(RESPONSES, 3600.0)",
             (f"{T_DUR}::test_old_acks_and_uncollected_responses_are_pruned",),
             "[spool] response_retention"),
    Mutation("retried-retention-ignored", HOUSEKEEPING,
             "(RETRIED, config.spool.retried_retention)", "(RETRIED, 7 * 86400.0)",
             (f"{T_OPER}::test_retried_records_get_the_spools_mode_and_are_pruned",),
             "[spool] retried_retention"),
    Mutation("inboxes-key-ignored", SPOOL, _SPOOL_FROM_CONFIG, _spool_from_config(inboxes='("messages",)'),
             ("tests/test_inboxes.py::test_task_commands_go_to_the_handler_of_their_type_else_legacy",),
             "[spool] inboxes"),
    Mutation("strict-groups-ignored-by-senders", CLIENT,
             "        if self.strict_groups:\n            raise UnknownGroup(group, known)",
             "        if False:\n            raise UnknownGroup(group, known)",
             (f"{T_OPER}::test_a_group_not_in_the_config_is_warned_of_or_refused",),
             "[spool] strict_groups: senders refuse a group not in groups"),
    Mutation("strict-groups-ignored-by-the-supervisor", SOURCE,
             "        if spool_config.strict_groups and group not in spool_config.groups:",
             "        if False:",
             (f"{T_OPER}::test_a_group_not_in_the_config_is_warned_of_or_refused",),
             "[spool] strict_groups: the supervisor serves only groups"),
    # -- [pool] -----------------------------------------------------------------------------------------------
    Mutation("workers-key-ignored", SUP,
             "PoolMetrics(Labels(config)), clock, config.pool.workers)",
             "PoolMetrics(Labels(config)), clock, 2)",
             (f"{T_LIVE}::test_status_shows_a_running_pool_as_a_table_and_as_json",),
             "[pool] workers"),
    Mutation("handler-timeout-ignored", LIMITS,
             "        if current is not None and now - started > pool.handler_timeout:",
             "        if current is not None and now - started > 600.0:",
             (f"{T_SUPV}::test_hung_handler_is_killed_at_timeout_then_quarantined_and_pool_recovers",),
             "[pool] handler_timeout"),
    Mutation("max-deliveries-ignored", ACCOUNTING,
             "        limit = self.pool.config.pool.max_deliveries", "        limit = 3",
             (f"{T_SUPV}::test_hung_handler_is_killed_at_timeout_then_quarantined_and_pool_recovers",),
             "[pool] max_deliveries"),
    Mutation("max-tasks-per-worker-ignored", LIFECYCLE,
             "        max_tasks = pool.config.pool.max_tasks_per_worker", "        max_tasks = 0",
             (f"{T_SUPV}::test_workers_recycle_after_max_tasks_without_loss",),
             "[pool] max_tasks_per_worker"),
    Mutation("max-memory-mb-ignored", LIMITS,
             "        limit_mb = pool.config.pool.max_memory_mb", "        limit_mb = 0",
             (f"{T_SUPV}::test_leaking_worker_is_recycled_without_losing_messages",),
             "[pool] max_memory_mb"),
    Mutation("kill-grace-ignored", HANDLE,
             "        self.kill_at = now + self.config.pool.kill_grace",
             "        self.kill_at = now + 3600.0",
             (f"{T_SUPV}::test_a_worker_that_ignores_sigterm_is_sigkilled_after_kill_grace[0.5]",),
             "[pool] kill_grace"),
    Mutation("max-boot-failures-ignored", LIFECYCLE,
             "        limit = pool.config.pool.max_boot_failures", "        limit = 3",
             (f"{T_LIVE}::test_max_boot_failures_is_the_number_of_boots_tried",),
             "[pool] max_boot_failures (a count)"),
    Mutation("boot-failures-not-reset-by-a-good-boot", LIFECYCLE,
             "            self.boot_failures = 0\n", "",
             (f"{T_LIVE}::test_boot_failures_count_only_in_a_row",),
             "[pool] max_boot_failures (in a row)"),
    # -- [retry] ----------------------------------------------------------------------------------------------
    Mutation("retry-attempts-ignored", RETRY,
             "        stop=tenacity.stop_after_attempt(policy.attempts),\n" + _HANDLER_RETRY_WAIT,
             "        stop=tenacity.stop_after_attempt(3),\n" + _HANDLER_RETRY_WAIT,
             (f"{T_LIVE}::test_handler_retries_back_off_by_the_factor_up_to_max_delay",),
             "[retry] attempts"),
    Mutation("retry-delay-ignored", RETRY, _HANDLER_RETRY_WAIT,
             _HANDLER_RETRY_WAIT.replace("_backoff(policy.delay,", "_backoff(0.1,"),
             (f"{T_LIVE}::test_handler_retries_back_off_by_the_factor_up_to_max_delay",
              f"{T_CLI}::test_a_handler_that_fails_once_is_retried_in_place_and_acked"),
             "[retry] delay"),
    Mutation("retry-backoff-ignored", RETRY, _HANDLER_RETRY_WAIT,
             _HANDLER_RETRY_WAIT.replace("policy.backoff, policy.max_delay", "1.0, policy.max_delay"),
             (f"{T_LIVE}::test_handler_retries_back_off_by_the_factor_up_to_max_delay",),
             "[retry] backoff"),
    Mutation("retry-max-delay-ignored", RETRY, _HANDLER_RETRY_WAIT,
             _HANDLER_RETRY_WAIT.replace("policy.backoff, policy.max_delay", "policy.backoff, 1e9"),
             (f"{T_LIVE}::test_handler_retries_back_off_by_the_factor_up_to_max_delay",),
             "[retry] max_delay"),
    # -- [heartbeat] ------------------------------------------------------------------------------------------
    Mutation("heartbeat-interval-ignored-for-status", SUP,
             "            self.next_status = now + self.config.heartbeat.interval",
             "            self.next_status = now + 3600.0",
             (f"{T_SUPV}::test_external_heartbeats_are_recorded_in_status_not_handled",),
             "[heartbeat] interval: status.json writes"),
    Mutation("heartbeat-miss-limit-ignored", LIMITS,
             "        silence_limit = hb.miss_limit * hb.interval\n",
             "        silence_limit = 1000 * hb.interval\n",
             (f"{T_SUPV}::test_health_follows_supervisor_and_stopped_worker",),
             "[heartbeat] miss_limit"),
    # -- [ack] ----------------------------------------------------------------------------------------------
    Mutation("ack-timeout-ignored", CLIENT,
             "        self.per_attempt = client.ack_policy.timeout if timeout is None else timeout",
             "        self.per_attempt = 30.0 if timeout is None else timeout",
             (f"{T_LIVE}::test_a_real_sender_backs_off_between_ack_attempts",),
             "[ack] timeout"),
    Mutation("ack-max-retries-ignored", RETRY,
             '        "stop": tenacity.stop_after_attempt(policy.max_retries + 1),',
             '        "stop": tenacity.stop_after_attempt(4),',
             (f"{T_LIVE}::test_a_real_sender_backs_off_between_ack_attempts",
              f"{T_CLIENT}::test_ack_timeout_after_one_plus_max_retries_attempts_leaves_one_copy"),
             "[ack] max_retries"),
    Mutation("ack-retry-delay-ignored", RETRY,
             "        wait: tenacity.wait.wait_base = tenacity.wait_fixed(policy.retry_delay)",
             "        wait: tenacity.wait.wait_base = tenacity.wait_fixed(5.0)",
             (f"{T_RETRY}::test_ack_waits_use_the_configured_retry_delay",),
             "[ack] retry_delay"),
    Mutation("ack-backoff-ignored", RETRY,
             "    if policy.backoff <= 1:", "    if True:",
             (f"{T_LIVE}::test_a_real_sender_backs_off_between_ack_attempts",),
             "[ack] backoff"),
    Mutation("ack-retention-ignored", HOUSEKEEPING,
             "((ACKS, config.ack.retention),", "((ACKS, 86400.0),",
             (f"{T_DUR}::test_old_acks_and_uncollected_responses_are_pruned",),
             "[ack] retention"),
    Mutation("log-messages-key-ignored", PIPELINE,
             "        self._log_messages = config.log.messages", "        self._log_messages = True",
             (f"{T_OPER}::test_one_info_line_per_finished_message[False]",),
             "[log] messages"),
    Mutation("log-format-ignored", "ipcpool/ops/logs.py",
             '    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(FORMAT))',
             "    handler.setFormatter(TextFormatter(FORMAT))",
             (f"{T_JSONLOG}::test_every_line_is_json_with_the_message_fields[spool]",),
             "[log] format"),
    # -- [http] -----------------------------------------------------------------------------------------------
    Mutation("http-listen-ignored", SUP,
             "            if self.config.http.listen:  # a taken port stops the start before any worker runs",
             "            if False:",
             (f"{T_HTTP}::test_readyz_and_healthz_answer_as_kubernetes_expects",),
             "[http] listen"),
    Mutation("http-loop-timeout-ignored", "ipcpool/ops/probes.py",
             "        self.loop_timeout = config.loop_timeout", "        self.loop_timeout = 5.0",
             (f"{T_HTTP}::test_a_loop_that_does_not_answer_fails_healthz_in_bounded_time",),
             "[http] loop_timeout"),
    # -- hostile HTTP clients (issue 23, item 9) -------------------------------------------------------------------
    Mutation("http-connection-cap-removed", PROBES,
             "            while len(self._connections) >= MAX_CONNECTIONS or (left is not None and left < 1):",
             "            while left is not None and left < 1:",
             (f"{T_HTTP}::test_connections_past_the_cap_close_the_oldest_unfinished_at_once",),
             "the probe server holds at most MAX_CONNECTIONS connections"),
    Mutation("http-oldest-unfinished-not-dropped", PROBES,
             "                self._close(self._reading.popitem(last=False)[1])\n"
             "                left = None if left is None else left + 1",
             "                self._pause()\n                return",
             (f"{T_HTTP}::test_half_open_connections_past_the_fd_limit_leave_healthz_and_worker_replacement_working",
              f"{T_HTTP}::test_connections_past_the_cap_close_the_oldest_unfinished_at_once"),
             "past the cap, the oldest unfinished connection makes room: a fresh probe always gets in"),
    Mutation("http-request-timeout-removed", PROBES,
             "            conn = _Connection(sock, time.monotonic() + REQUEST_TIMEOUT)",
             '            conn = _Connection(sock, float("inf"))',
             (f"{T_HTTP}::test_a_request_not_finished_in_request_timeout_is_closed_even_if_it_trickles",),
             "a request not sent within REQUEST_TIMEOUT is closed"),
    Mutation("http-request-timeout-per-read", PROBES,
             "        conn.head += data\n",
             "        conn.head += data\n        conn.deadline = time.monotonic() + REQUEST_TIMEOUT\n",
             (f"{T_HTTP}::test_a_request_not_finished_in_request_timeout_is_closed_even_if_it_trickles",),
             "the request timeout is a deadline: trickled bytes do not extend it"),
    Mutation("http-fd-reserve-removed", PROBES,
             "        return None if used is None else soft - FD_RESERVE - used",
             "        return None if used is None else soft - used",
             (f"{T_HTTP}::test_half_open_connections_past_the_fd_limit_leave_healthz_and_worker_replacement_working",),
             "the probe server leaves FD_RESERVE descriptors to the loop (a killed worker is replaced)"),
    Mutation("http-thread-per-request", PROBES,
             "        conn.ticket = self.probe.question()\n",
             "        threading.Thread(target=self.probe.ask, args=(self.loop_timeout,), daemon=True).start()\n"
             "        conn.ticket = self.probe.question()\n",
             (f"{T_HTTP}::test_many_probes_at_once_against_a_stuck_loop_cost_no_thread_and_each_gets_503_in_time",),
             "the probe server's threads are bounded: none per connection or request"),
    Mutation("open-fds-fallback-skipped", PROBES,
             "        except (FileNotFoundError, NotADirectoryError):\n            continue",
             "        except (FileNotFoundError, NotADirectoryError):\n            return None",
             (f"{T_HTTP}::test_open_fds_counts_through_its_fallback_listing_too",),
             "open descriptors are counted where /proc is missing (/dev/fd, macOS)"),
    Mutation("reload-size-not-kept", RELOAD,
             "        pool.resize(reloading.pool_size)", "        pool.resize(pool.config.pool.workers)",
             (f"{T_RELOAD}::test_a_failed_reload_keeps_the_size_sigttin_gave",),
             "a failed reload keeps the pool's size"),
    Mutation("heartbeat-reloadable", "ipcpool/pool/reload.py",
             'RESTART_ONLY = ("spool", "transport", "redis", "http", "heartbeat")',
             'RESTART_ONLY = ("spool", "transport", "redis", "http")',
             (f"{T_RELOAD}::test_a_reload_that_cannot_apply_leaves_the_old_pool_running[interval = 0.25-interval = 0.5-"
              "[heartbeat] interval changed (0.25 -> 0.5): restart to apply it]",),
             "[heartbeat] is fixed for the supervisor's life"),
    Mutation("returned-counted-finished", ACCOUNTING,
             "            self.pool.metrics.returned_to_queue(delivery.group)",
             '            self.pool.metrics.count(delivery.group, "unknown", "returned")',
             (f"{T_HTTP}::test_a_worker_killed_with_work_in_hand_counts_it_returned_not_finished",),
             "returned messages are not finished ones"),
    # -- [transport], [redis] -------------------------------------------------------------------------------
    Mutation("backend-key-ignored", SEAM,
             '    if config.transport.backend == "redis":\n        from ipcpool.transport.bridge import Bridge',
             '    if False:\n        from ipcpool.transport.bridge import Bridge',
             ("tests/test_transports.py::test_messages_flow_acked_once_each[redis]",),
             "[transport] backend: the supervisor serves the configured backend"),
    Mutation("redis-url-ignored", R_CONN,
             "    return redis.Redis.from_url(config.redis.url, **client_options(config, timeout))",
             '    return redis.Redis.from_url("redis://127.0.0.1:6379/0", **client_options(config, timeout))',
             (f"{T_REDIS}::test_redis_going_away_loses_nothing_and_is_logged_once",),
             "[redis] url"),
    Mutation("redis-prefix-ignored", R_SOURCE,
             "        self.keys = Keys(config.redis.prefix)", '        self.keys = Keys("ipcpool")',
             (f"{T_REDIS}::test_two_prefixes_on_one_redis_are_two_deployments",),
             "[redis] prefix"),
    Mutation("redis-lease-ignored", R_SOURCE,
             ("        self.lease_ms = int(config.redis.lease * 1000)",
              "        self.next_reclaim = self.clock() + self.config.redis.lease / 2",
              "                self.next_reclaim = now + self.config.redis.lease / 2"),
             ("        self.lease_ms = 30_000",
              "        self.next_reclaim = self.clock() + 15.0",
              "                self.next_reclaim = now + 15.0"),
             (f"{T_REDIS}::test_delivery_counts_are_kept_in_redis_and_go_on_on_another_host",),
             "[redis] lease: a dead supervisor's messages are taken over after it"),
    Mutation("redis-ca-file-ignored", R_CONN,
             '        options["ssl_ca_certs"] = config.redis.ca_file', "        pass",
             (f"{T_REDIS}::test_an_acl_user_and_tls_and_the_password_is_never_logged",),
             "[redis] ca_file"),
    Mutation("redis-outage-timeout-ignored", R_OUTBOX,
             "        return retrying(self.outage, self.config.redis.outage_timeout, operation)",
             "        return retrying(self.outage, 0.0, operation)",
             (f"{T_REDIS}::test_redis_going_away_loses_nothing_and_is_logged_once",),
             "[redis] outage_timeout: senders retry through an outage"),
    Mutation("redis-dead-letter-retention-ignored", R_SOURCE,
             "        cutoff_ms = int((time.time() - self.config.redis.dead_letter_retention) * 1000)",
             "        cutoff_ms = 0",
             (f"{T_REDIS}::test_memory_stays_bounded",),
             "[redis] dead_letter_retention"),
    Mutation("redis-completions-unchecked", R_STORE,
             "                    if there:\n                        self._complete_again(call, report)",
             "                    if False:\n                        self._complete_again(call, report)",
             (f"{T_REDIS}::test_a_full_redis_holds_the_ack_runs_no_handler_twice_and_carries_on",),
             "a worker's unanswered completions are checked before it reports"),
    Mutation("redis-full-is-a-crash", R_CONN,
             "               redis.exceptions.OutOfMemoryError, OSError)", "               OSError)",
             (f"{T_REDIS}::test_a_full_redis_holds_the_ack_runs_no_handler_twice_and_carries_on",),
             "a full Redis is waited out like an outage"),
    # -- Redis outages, completions kept, the bridge, consumer names (issue 23, items 5-8) -----------------------
    Mutation("redis-reclaim-not-held-after-an-outage", R_SCRIPTS,
             "if hold > 0 then return {'hold', hold} end", "if false then return {'hold', hold} end",
             (f"{T_REDIS}::test_an_outage_longer_than_the_lease_hands_no_live_work_to_another_supervisor",
              f"{T_REDIS}::test_a_redis_stalled_longer_than_the_lease_hands_no_live_work_to_another_supervisor"),
             "after an outage of everyone no supervisor reclaims for a lease: each renews its own first"),
    Mutation("redis-renewals-do-not-tick", R_SOURCE,
             "        self.scripts.tick(keys=[self.keys.alive, self.keys.reclaim_hold], args=[self.gap_ms, "
             "self.lease_ms],\n                          client=pipe)\n",
             "",
             (f"{T_REDIS}::test_a_dead_supervisors_whole_backlog_is_taken_over_in_one_pass",),
             "every renewal says Redis was reached: a live cluster's reclaims are never held back"),
    Mutation("redis-supervisor-back-off-uncapped", R_SOURCE,
             '        self.outage = Outage(config, "supervisor", cap=config.redis.lease / 4)',
             '        self.outage = Outage(config, "supervisor")',
             (f"{T_REDIS}::test_a_supervisor_is_back_within_a_quarter_lease_of_redis_however_long_it_was_away",),
             "a supervisor is back within a quarter lease of Redis, well within the held lease"),
    Mutation("redis-no-renewal-first-after-a-stall", R_SOURCE,
             "            if self.outage.down or now - self.renewed_at > 2 * self.renew_every:\n",
             "            if False:\n",
             (f"{T_REDIS}::test_a_supervisor_frozen_past_its_lease_never_starts_what_it_had_queued_and_lost",),
             "back from an outage or a stall, a supervisor renews before it hands anything out"),
    Mutation("redis-lost-entry-still-handed-out", R_SOURCE,
             "        self.queue.pop(key, None)\n        self.later.pop(key, None)\n",
             "",
             (f"{T_REDIS}::test_a_supervisor_frozen_past_its_lease_never_starts_what_it_had_queued_and_lost",),
             "an entry another supervisor took is never handed out here again"),
    Mutation("redis-lost-lease-said-every-heartbeat", R_SOURCE,
             ("*self.lines.waiting} - self.lost:", "        if key in self.lost:\n            return\n"),
             ("*self.lines.waiting}:", ""),
             (f"{T_REDIS}::test_a_supervisor_that_lost_its_lease_says_so_once_and_finishes_late",),
             "a lost lease is logged once, not at every heartbeat while the late handler runs"),
    Mutation("redis-kept-completions-not-on-disk", R_SOURCE,
             ("            what, message_id = \"its ACK\", unfinished.message_id\n"
              "        self.journal.save(self.pending_work)\n"),
             "            what, message_id = \"its ACK\", unfinished.message_id\n",
             (f"{T_REDIS}::test_an_ack_held_through_an_outage_survives_a_drain_and_a_restart",),
             "an ack kept through an outage is kept on the local root across a drain"),
    Mutation("redis-kept-completions-not-read-at-start", R_SOURCE,
             "        self.pending_work.update(self.journal.load())\n",
             "        self.journal.load()\n",
             (f"{T_REDIS}::test_an_ack_held_through_an_outage_survives_a_drain_and_a_restart",),
             "a start finishes the completions a previous run kept before it takes work"),
    Mutation("redis-bridge-ignores-a-namesake-in-flight", R_SCRIPTS,
             "  if redis.call('EXISTS', KEYS[2]) == 1 then return {'busy'} end\n",
             "",
             (f"{T_REDIS}::test_a_file_dropped_again_under_its_name_while_it_runs_waits_then_is_skipped_as_a_duplicate",),
             "a file dropped again under its name waits for its namesake, then meets its ack (Redis)"),
    Mutation("redis-bridge-sends-undecodable-files", R_INGEST,
             "            said = summarize(decode(result.data, fmt), stem_of(name))\n",
             "            said = summarize({}, stem_of(name))\n",
             (f"{T_TRANSPORTS}::test_a_file_written_in_place_is_handled_once_whole_and_never_half[redis]",
              f"{T_REDIS}::test_a_local_file_that_never_decodes_is_quarantined_locally_once_settled"),
             "guarantee 1 on Redis: the bridge never sends on a file that does not decode"),
    Mutation("redis-bridge-does-not-wait-for-a-file-to-settle", R_INGEST,
             "            if -FUTURE_MTIME_SLACK < time.time() - result.mtime < settle:\n",
             "            if False:\n",
             (f"{T_TRANSPORTS}::test_a_file_written_in_place_is_handled_once_whole_and_never_half[redis]",),
             "guarantee 1 on Redis: a file still being written waits for settle_time"),
    Mutation("redis-finished-entry-called-lost", R_SCRIPTS,
             "  if pending[1] then\n    if pending[1][2] == ARGV[2] then\n",
             "  if true then\n    if pending[1] and pending[1][2] == ARGV[2] then\n",
             (f"{T_REDIS}::test_a_busy_supervisor_alone_never_says_it_lost_a_lease",),
             "an entry its own worker just finished is no lost lease (no false alarms under load)"),
    Mutation("supervisor-judges-hung-without-reading-its-pipe", LIMITS,
             "            self._read_leftovers(worker)\n        silent = now - worker.last_heartbeat\n",
             "            pass\n        silent = now - worker.last_heartbeat\n",
             (f"{T_SUPV}::test_a_supervisor_stopped_and_continued_does_not_take_its_working_workers_for_hung",),
             "a supervisor stopped and continued reads its workers' heartbeats before it calls one hung"),
    Mutation("redis-consumer-named-by-host-and-path", "ipcpool/transport/redis/consumer.py",
             '    return f"{socket.gethostname()}:{token}"',
             '    return f"{socket.gethostname()}:{os.path.abspath(root)}"',
             (f"{T_REDIS}::test_two_containers_with_one_host_name_and_root_path_never_take_each_others_work",),
             "no two supervisors share a consumer name; a restart in place takes back its own"),
    # -- [handlers], [groups.*] ------------------------------------------------------------------------------
    Mutation("handler-types-ignored", HANDLERS,
             "        handler = self._handlers.get(message.type)\n", "        handler = None\n",
             ("tests/test_e2e_basic.py::test_messages_from_every_kind_of_writer_are_handled_once_and_acked",),
             "[handlers] <type>"),
    Mutation("legacy-handler-ignored", HANDLERS,
             '            handler = self._handlers.get("legacy")',
             '            handler = None',
             ("tests/test_inboxes.py::test_task_commands_go_to_the_handler_of_their_type_else_legacy",),
             "[handlers] legacy"),
    Mutation("star-handler-ignored", HANDLERS,
             '        self._fallback = self._handlers.get("*")', "        self._fallback = None",
             (f"{T_PROM}::test_star_legacy_and_async_handlers_run_in_a_real_worker",),
             '[handlers] "*"'),
    Mutation("async-handler-not-awaited", HANDLERS,
             "        if result is not None and inspect.isawaitable(result):", "        if False:",
             (f"{T_PROM}::test_star_legacy_and_async_handlers_run_in_a_real_worker",),
             "handlers may be async def"),
    Mutation("heartbeat-handler-ignored", PIPELINE,
             "        self._record_heartbeats = not handlers.has(_HEARTBEAT)",
             "        self._record_heartbeats = True",
             (f"{T_PROM}::test_a_configured_heartbeat_handler_handles_heartbeats_instead_of_status",),
             "heartbeats recorded unless a heartbeat handler is configured"),
    Mutation("allowed-types-ignored", PIPELINE,
             "        self._allowed = {g: set(c.allowed_types) for g, c in config.groups.items() "
             "if c.allowed_types}",
             "        self._allowed: dict[str, set[str]] = {}",
             ("tests/test_hostile.py::test_disallowed_type_for_group_is_rejected",),
             "[groups.<name>] allowed_types"),
    # -- odd entries at odd moments (issue 23) -------------------------------------------------------
    Mutation("put-back-opens-entries-plainly", WRITES,
             "        fd = os.open(path, _OPEN_READ)\n    except OSError:\n        return None",
             "        fd = os.open(path, os.O_RDONLY)\n    except OSError:\n        return None",
             ("tests/test_odd_entries.py::test_a_message_put_back_beside_a_planted_entry_is_kept_and_the_entry_"
              "quarantined",),
             "a put-back never follows a planted link nor blocks on a FIFO"),
    Mutation("put-back-reads-hard-links", WRITES,
             "        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:",
             "        if not stat.S_ISREG(st.st_mode):",
             ("tests/test_planted_entries.py::test_every_kind_of_entry_in_every_folder_at_every_transition",),
             "nothing outside the root is read (a hard link's other name)"),
    Mutation("names-encoded-strictly", LAYOUT,
             "    raw = os.fsencode(name)\n    if len(raw) <= max_bytes:",
             "    raw = name.encode()\n    if len(raw) <= max_bytes:",
             ("tests/test_odd_entries.py::test_a_name_that_is_not_utf8_is_quarantined_and_the_batch_behind_it_"
              "handled",),
             "any name the kernel accepts is handled or quarantined"),
    Mutation("copy-names-not-shortened", LAYOUT,
             "    return shorten(stem, NAME_MAX - len(os.fsencode(tail))) + tail",
             "    return stem + tail",
             ("tests/test_odd_entries.py::test_a_255_byte_name_is_put_back_beside_its_namesake",
              "tests/test_odd_entries.py::test_errors_retry_of_a_255_byte_name_beside_its_namesake"),
             "a copy's suffix always fits in 255 bytes"),
    Mutation("shared-queued-files-group-writable", LAYOUT,
             "_SHARED_MESSAGE_FILE = 0o640", "_SHARED_MESSAGE_FILE = 0o660",
             ("tests/test_odd_entries.py::test_a_group_writer_cannot_rewrite_another_writers_queued_message",),
             "shared mode: a queued message is its writer's alone to change"),
    Mutation("untracked-processing-left-alone", SOURCE,
             "                self._put_back_untracked(group)\n", "",
             ("tests/test_odd_entries.py::test_a_file_left_in_processing_that_nothing_tracks_is_put_back_by_the_"
              "rescans",),
             "the directory is the truth for processing/ too"),
    Mutation("ack-hold-not-fsynced", CLAIMS,
             "            if self.writer.fsync:  # the proof that it was handled must outlive a power loss as an ack "
             "would\n                self.writer.fsync_dir(self.path(group, PROCESSING))\n", "",
             (f"{T_LIVE}::test_power_durability_fsyncs_ack_holds_and_delivery_records",),
             'durability = "power": .ack-<id> holds fsynced'),
    Mutation("delivery-records-not-fsynced", "ipcpool/transport/spool/deliveries.py",
             "        os.replace(tmp, path)\n        if self.writer.fsync:\n"
             "            self.writer.fsync_dir(str(path.parent))\n",
             "        os.replace(tmp, path)\n",
             (f"{T_LIVE}::test_power_durability_fsyncs_ack_holds_and_delivery_records",),
             'durability = "power": delivery records fsynced'),
    Mutation("ack-pruning-trusts-a-jumped-clock", HOUSEKEEPING,
             "(ledger_now if sub == ACKS else wall) - age", "wall - age",
             ("tests/test_clock_jump.py::test_a_wall_clock_jump_past_the_retention_keeps_the_acks_a_sender_may_"
              "still_retry",),
             "a wall clock jump never prunes the dedupe ledger"),
    Mutation("log-lines-not-escaped", "ipcpool/ops/logs.py",
             "            record.message = printable(record.message)\n",
             "            pass\n",
             ("tests/test_odd_entries.py::test_a_name_with_control_characters_is_logged_escaped_on_one_line",),
             "a writer's name never reaches the log raw: one line per event"),
    # -- what writers chose, on an operator's terminal (issue 23, item 10) --------------------------------
    Mutation("terminal-escaping-removed", TERMINAL,
             "    return (_UNSAFE_BUT_NEWLINE if newlines else _UNSAFE).sub(_escape, str(text))",
             "    return str(text)",
             (f"{T_TERM}::test_errors_list_and_show_escape_what_writers_chose",
              f"{T_TERM}::test_status_and_top_escape_a_running_message_and_an_external_heartbeat",
              f"{T_TERM}::test_the_process_title_of_a_worker_running_a_hostile_message_is_escaped",
              f"{T_TERM}::test_printable_escapes_every_unsafe_character_and_nothing_else"),
             "writers' text reaches no terminal raw"),
    Mutation("terminal-c1-not-escaped", TERMINAL,
             '_CONTROLS = "\\x00-\\x09\\x0b-\\x1f\\x7f-\\x9f"', '_CONTROLS = "\\x00-\\x09\\x0b-\\x1f\\x7f"',
             (f"{T_TERM}::test_errors_list_and_show_escape_what_writers_chose",
              f"{T_TERM}::test_status_and_top_escape_a_running_message_and_an_external_heartbeat"),
             "C1 controls (a one-character CSI) are escaped"),
    Mutation("terminal-bidi-not-escaped", TERMINAL,
             '_BIDI = "\\u061c\\u200e\\u200f\\u202a-\\u202e\\u2066-\\u2069"', '_BIDI = ""',
             (f"{T_TERM}::test_errors_list_and_show_escape_what_writers_chose",
              f"{T_TERM}::test_status_and_top_escape_a_running_message_and_an_external_heartbeat"),
             "bidi overrides are escaped (no trojan-source reordering)"),
    Mutation("errors-list-unescaped", "ipcpool/cli/deadletters.py",
             "        print(printable(f\"{s['time']}  {s['group']}", "        print(str(f\"{s['time']}  {s['group']}",
             (f"{T_TERM}::test_errors_list_and_show_escape_what_writers_chose",),
             "errors list escapes types and ids"),
    Mutation("errors-show-body-unescaped", "ipcpool/cli/deadletters.py",
             '        lines += [f"    {line}" for line in _block(_pretty(message))]',
             '        lines += [f"    {line}" for line in _pretty(message).splitlines()]',
             (f"{T_TERM}::test_errors_list_and_show_escape_what_writers_chose",),
             "errors show escapes the message body"),
    Mutation("errors-show-ids-unescaped", "ipcpool/cli/deadletters.py",
             "        print(printable(f\"{args.id!r} is the start of",
             "        print(str(f\"{args.id!r} is the start of",
             (f"{T_TERM}::test_errors_list_and_show_escape_what_writers_chose",),
             "errors show escapes the ids an ambiguous prefix matches"),
    Mutation("status-running-unescaped", "ipcpool/cli/views.py",
             "    return (f\"{printable(current.get('type') or '?')} {printable(current.get('id'))} \"",
             "    return (f\"{current.get('type') or '?'} {current.get('id')} \"",
             (f"{T_TERM}::test_status_and_top_escape_a_running_message_and_an_external_heartbeat",),
             "status escapes the running message's type and id"),
    Mutation("status-heartbeat-unescaped", "ipcpool/cli/views.py",
             "{printable(h['processId']):>10} {printable(h['status']):<10} ",
             "{h['processId']!s:>10} {h['status']!s:<10} ",
             (f"{T_TERM}::test_status_and_top_escape_a_running_message_and_an_external_heartbeat",),
             "status escapes what external heartbeats say"),
    Mutation("top-cells-unescaped", "ipcpool/cli/liveview.py",
             "    return Text(printable(value), style=style)", "    return Text(str(value), style=style)",
             (f"{T_TERM}::test_status_and_top_escape_a_running_message_and_an_external_heartbeat",),
             "top escapes the running message's type and id"),
    Mutation("top-markup-obeyed", "ipcpool/cli/liveview.py",
             "    return Text(printable(value), style=style)",
             "    return Text.from_markup(printable(value), style=style)",
             (f"{T_TERM}::test_status_and_top_escape_a_running_message_and_an_external_heartbeat",),
             "top shows rich markup and emoji codes in writers' text, never obeys them"),
    Mutation("proctitle-unescaped", "ipcpool/ops/proctitle.py",
             "{printable(current.get('type'))} {printable(current.get('id'))}",
             "{current.get('type')} {current.get('id')}",
             (f"{T_TERM}::test_the_process_title_of_a_worker_running_a_hostile_message_is_escaped",),
             "a worker's process title escapes the id it shows"),
    Mutation("nack-without-timestamp-answers-anyone", CLIENT,
             "body.get(\"timestamp\") is None and body.get(\"sha256\") == digest)",
             "body.get(\"timestamp\") is None)",
             ("tests/test_odd_entries.py::test_a_file_dropped_under_a_senders_id_does_not_answer_that_sender",),
             "a nack whose id comes only from a file name answers only the sender of those bytes"),
    Mutation("bridged-answers-not-written-back", "ipcpool/transport/bridge/__init__.py",
             "        if self.relay is not None:\n            self.relay.check(now)\n", "",
             ("tests/test_bridge_answers.py::test_answers_of_a_bridged_file_come_back_beside_it_from_another_host",),
             "on Redis, a bridged file's ack, nack and response are written back beside it"),
    Mutation("bridged-answers-forgotten-at-restart", "ipcpool/transport/bridge/__init__.py",
             "        return self.relay.load()", "        return 0",
             ("tests/test_bridge_answers.py::test_answers_come_back_across_a_restart_of_the_supervisor_that_took_"
              "the_file",),
             "bridged answers come back across a restart of the supervisor that took the file"),
    Mutation("dispatch-room-stays-stale", DISPATCH,
             "        self.room = max(0, wanted)", "        pass",
             ("tests/test_bridge_answers.py::test_answers_of_a_bridged_file_come_back_beside_it_from_another_host",),
             "a busy supervisor does not read ahead for room it handed out (prefetch 1 never hoards)"),
    Mutation("bridge-sends-names-redis-cannot-hold", R_INGEST,
             '    return os.fsencode(message_stem(name)).decode("utf-8", "backslashreplace")',
             "    return message_stem(name)",
             ("tests/test_planted_entries.py::test_every_kind_of_entry_in_every_folder_at_every_transition[redis]",),
             "through the bridge too, any name the kernel accepts is handled or quarantined"),
    # -- signals, the CLI, logging, the environment ----------------------------------------------------
    Mutation("sigint-not-a-drain", SUP,
             "DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGXCPU,",
             "DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGXCPU,",
             (f"{T_DRAIN}::test_sigint_drains_the_running_message_and_returns_the_rest",),
             "SIGTERM or SIGINT drains"),
    Mutation("second-sigint-ignored", SUP,
             "        self.limits.drain_deadline = 0.0\n", "        pass\n",
             (f"{T_DRAIN}::test_a_second_sigint_stops_at_once_and_puts_the_held_message_back",),
             "a second SIGINT stops now"),
    Mutation("status-json-and-table-swapped", "ipcpool/cli/commands.py",
             "reason=verdict.reason), indent=1) if args.json\n",
             "reason=verdict.reason), indent=1) if not args.json\n",
             (f"{T_LIVE}::test_status_shows_a_running_pool_as_a_table_and_as_json",),
             "ipcpool status (table, --json)"),
    Mutation("log-level-ignored", "ipcpool/ops/logs.py",
             '    name = os.environ.get("LOG_LEVEL", "info").upper()', '    name = "INFO"',
             (f"{T_LIVE}::test_log_level_debug_shows_debug_lines_from_every_process",
              f"{T_LIVE}::test_log_level_warning_hides_info"),
             "LOG_LEVEL"),
    Mutation("ipcpool-root-ignored", "ipcpool/config.py",
             "    if env.get(ROOT_ENV):", "    if False:",
             (f"{T_LIVE}::test_ipcpool_root_overrides_the_configured_root_and_groups_are_made_at_start",),
             "IPCPOOL_ROOT"),
    Mutation("log-phrase-watcher-setup", WATCHER,
             '        self._watches[group] = wds\n        log.info("IPC watcher setup for group %s (inotify)", group)',
             '        self._watches[group] = wds\n        log.info("watching group %s (inotify)", group)',
             (f"{T_LIVE}::test_the_original_log_phrases",),
             'log phrase "IPC watcher setup for group"'),
    Mutation("log-phrase-message-sent", CLIENT,
             '            log.info("IPC message sent id=%s group=%s (waiting for ACK)", message_id, group)',
             '            log.info("Message published id=%s group=%s (waiting for ACK)", message_id, group)',
             (f"{T_LIVE}::test_the_original_log_phrases",),
             'log phrase "IPC message sent"'),
    Mutation("log-phrase-ack-received", CLIENT,
             '        log.info("ACK received id=%s group=%s attempt=%d", message.message_id, message.group, '
             "self.attempts)",
             '        log.info("Acknowledged id=%s group=%s attempt=%d", message.message_id, message.group, '
             "self.attempts)",
             (f"{T_LIVE}::test_the_original_log_phrases",),
             'log phrase "ACK received"'),
    # -- [[schedule]] (issue 27): each key, and each promise of docs/schedules.md ------------------------------------
    Mutation("schedule-names-may-repeat", SCHED,
             "        if spec.name.casefold() in seen:  # names become file names: one folder on a Mac ignores case",
             "        if False:",
             (f"{T_SCHED}::test_names_are_unique_and_required",),
             "[[schedule]] name: unique"),
    Mutation("schedule-id-not-derived-from-the-name", SCHED,
             "        return f\"{ID_PREFIX}-{self.name}-{time.strftime(",
             "        return f\"{ID_PREFIX}-{time.strftime(",
             (f"{T_SCHED}::test_every_counts_from_the_epoch_so_every_supervisor_agrees",
              f"{T_SCHED}::test_a_schedule_publishes_its_type_and_payload_into_its_group"),
             "[[schedule]] name: each due time's id is derived from the schedule's name and the due time"),
    Mutation("schedule-group-ignored", SCHEDULER,
             "            published = self.outbox.publish_due(spec.name, due, spec.group, name,",
             "            published = self.outbox.publish_due(spec.name, due, \"main\", name,",
             (f"{T_SCHED}::test_a_schedule_publishes_its_type_and_payload_into_its_group",),
             "[[schedule]] group"),
    Mutation("schedule-type-ignored", SCHED,
             "        envelope = build_envelope(self.group, self.type, self.payload,",
             "        envelope = build_envelope(self.group, \"tick\", self.payload,",
             (f"{T_SCHED}::test_a_schedule_publishes_its_type_and_payload_into_its_group",),
             "[[schedule]] type"),
    Mutation("schedule-payload-ignored", SCHED,
             "        envelope = build_envelope(self.group, self.type, self.payload,",
             "        envelope = build_envelope(self.group, self.type, {},",
             (f"{T_SCHED}::test_a_schedule_publishes_its_type_and_payload_into_its_group",
              f"{T_SCHED}::test_a_supervisor_publishes_each_due_time_once_and_shows_them[spool]"),
             "[[schedule]] payload"),
    Mutation("schedule-cron-ignored", SCHED,
             "            for due in CronSim(self.cron, start):",
             "            for due in CronSim(\"0 * * * *\", start):",
             (f"{T_SCHED}::test_cron_in_a_timezone_keeps_local_time_through_both_dst_changes",),
             "[[schedule]] cron: five fields, standard syntax"),
    Mutation("schedule-every-ignored", SCHED,
             "            return (int(after // self.every) + 1) * self.every",
             "            return (int(after // 60) + 1) * 60",
             (f"{T_SCHED}::test_every_counts_from_the_epoch_so_every_supervisor_agrees",
              f"{T_SCHED}::test_a_supervisor_publishes_each_due_time_once_and_shows_them[spool]"),
             "[[schedule]] every (seconds)"),
    Mutation("schedule-timezone-ignored", SCHED,
             "        start = dt.datetime.fromtimestamp(int(after), self.tz)",
             "        start = dt.datetime.fromtimestamp(int(after), UTC)",
             (f"{T_SCHED}::test_cron_in_a_timezone_keeps_local_time_through_both_dst_changes",),
             "[[schedule]] timezone: cron read in an IANA zone, through DST"),
    Mutation("schedule-missed-skip-publishes-anyway", SCHEDULER,
             "            if due is not None and spec.missed == \"skip\":", "            if False:",
             (f"{T_SCHED}::test_after_downtime_once_publishes_the_latest_missed_due_time_and_skip_none[skip-expected1]",
              f"{T_SCHED}::test_after_a_sigkill_a_restart_publishes_no_due_time_twice[spool-skip]",
              f"{T_SCHED}::test_after_a_sigkill_a_restart_publishes_no_due_time_twice[redis-skip]"),
             "[[schedule]] missed = \"skip\": no missed due time published after downtime"),
    Mutation("schedule-missed-once-publishes-the-oldest", SCHEDULER,
             "            due = spec.latest(min(now, self.started), state.anchor)",
             "            due = state.next",
             (f"{T_SCHED}::test_after_downtime_once_publishes_the_latest_missed_due_time_and_skip_none[once-expected0]",
              f"{T_SCHED}::test_after_a_sigkill_a_restart_publishes_no_due_time_twice[spool-once]",
              f"{T_SCHED}::test_after_a_sigkill_a_restart_publishes_no_due_time_twice[redis-once]"),
             "[[schedule]] missed = \"once\" (default): after downtime the latest missed due time, once"),
    Mutation("schedule-first-sight-not-recorded", SCHEDULER,
             "self.outbox.schedule_marks([spec.name for spec in todo], since=int(now))",
             "self.outbox.schedule_marks([spec.name for spec in todo], since=None)",
             (f"{T_SCHED}::test_a_due_time_lost_before_the_first_publish_is_published_at_the_next_start",),
             "schedules: a due time lost to a SIGKILL before the first publish is published at the next start"),
    Mutation("schedule-spool-republishes-what-it-did-not-record", S_OUTBOX,
             "        if not (self.present(group, name, message_id) or self.nack(group, message_id) is not None):",
             "        if True:",
             (f"{T_SCHED}::test_on_the_spool_a_due_time_published_but_not_recorded_is_not_published_again",
              f"{T_SCHED}::test_a_due_time_handled_before_a_sigkill_but_not_recorded_is_not_published_again[spool]"),
             "schedules: a restart never publishes one due time twice (SIGKILL between the message and its record)"),
    Mutation("schedule-redis-republishes-an-acked-due-time", R_SCRIPTS,
             "if redis.call('EXISTS', KEYS[5]) == 1 then  -- handled already",
             "if false then  -- handled already",
             (f"{T_SCHED}::test_a_due_time_handled_before_a_sigkill_but_not_recorded_is_not_published_again[redis]",),
             "schedules on Redis: a due time whose id is acked is never published again"),
    Mutation("schedule-redis-supervisors-publish-each-due-time", R_SCRIPTS,
             "if last and tonumber(last) >= tonumber(ARGV[8]) then return {'same'} end",
             "if false then return {'same'} end",
             (f"{T_SCHED}::test_supervisors_sharing_one_redis_publish_each_due_time_once",),
             "schedules on Redis: N supervisors publish each due time once between them"),
    Mutation("schedule-tables-not-checked", "ipcpool/config.py",
             "        schedules=parse_schedules(data.get(\"schedule\", []), c.fail),", "        schedules=(),",
             (f"{T_SCHED}::test_a_bad_schedule_stops_check_and_run_with_exit_2[spool-check]",
              f"{T_SCHED}::test_a_bad_schedule_stops_check_and_run_with_exit_2[redis-check]"),
             "a bad schedule stops ipcpool run and ipcpool check with exit 2"),
    Mutation("schedule-error-does-not-say-the-range", SCHED,
             "            return f\"{name} must be {low}-{high}\"", "            return f\"{name} is not valid\"",
             (f"{T_SCHED}::test_a_bad_schedule_stops_check_and_run_with_exit_2[spool-run]",),
             "a bad schedule is named: cron \"61 * * * *\": minute must be 0-59"),
    Mutation("schedule-list-shows-one-due-time", SCHED,
             "SHOWN_DUE_TIMES = 3", "SHOWN_DUE_TIMES = 1",
             (f"{T_SCHED}::test_a_supervisor_publishes_each_due_time_once_and_shows_them[spool]",),
             "ipcpool schedule list: each schedule's next three due times in its timezone"),
    Mutation("schedule-list-never-shows-the-last-published", SCHED,
             "    if mark and mark.get(\"due\") is not None:", "    if False:",
             (f"{T_SCHED}::test_a_supervisor_publishes_each_due_time_once_and_shows_them[redis]",),
             "ipcpool schedule list: the last published"),
    Mutation("schedule-status-json-without-schedules", "ipcpool/cli/commands.py",
             "        status = dict(status, schedules=schedule_views(config))", "        pass",
             (f"{T_SCHED}::test_a_supervisor_publishes_each_due_time_once_and_shows_them[spool]",),
             "ipcpool status --json has the schedules (no supervisor needed)"),
    Mutation("schedule-status-json-of-the-supervisor-without-schedules", "ipcpool/ops/status.py",
             "        \"schedules\": [dict(schedule) for schedule in snap.schedules],", "        \"schedules\": [],",
             (f"{T_SCHED}::test_a_supervisor_publishes_each_due_time_once_and_shows_them[spool]",),
             "the supervisor's status.json has the schedules"),
    # -- the second review: a SIGKILLed supervisor's workers, the bridge, what operators read, modes ---------
    Mutation("orphaned-worker-quits-mid-handler", "ipcpool/pool/worker.py",
             "                        self._outlive_supervisor(supervisor)",
             "                        self.exit_now(EXIT_OK)",
             (f"{T_SUPV}::test_a_worker_whose_supervisor_is_sigkilled_finishes_its_message_and_the_successor_"
              "waits_for_it",),
             "a worker whose supervisor is SIGKILLed finishes its message; it is not run twice"),
    Mutation("successor-kills-live-old-workers-after-the-short-grace", "ipcpool/pool/orphans.py",
             "                for pid in _kill_holders(fd, local, process_stopped, spared=told):",
             "                for pid in _kill_holders(fd, local, lambda _pid: True, spared=told):",
             (f"{T_SUPV}::test_a_worker_whose_supervisor_is_sigkilled_finishes_its_message_and_the_successor_"
              "waits_for_it",),
             "the next supervisor waits for an old worker that still runs a message"),
    # Two guards that only fail together: the marker names the bytes, and it goes once the file is gone.
    Mutation("bridge-marker-without-the-bytes-and-kept", R_INGEST,
             ('        identity = os.fsencode(name) + f":{st.st_ino}:{st.st_mtime_ns}:{st.st_size}:{digest}".encode()',
              "        self._forget_marker(marker)\n"),
             ('        identity = os.fsencode(name) + f":{st.st_ino}:{st.st_mtime_ns}:{st.st_size}".encode()',
              "        pass\n"),
             ("tests/test_bridge_answers.py::test_a_name_reused_within_one_second_on_a_whole_second_filesystem_is_"
              "sent_every_time",),
             "the bridge never takes a new file for the one before it (whole-second file times)"),
    Mutation("bridge-outage-strands-the-batch", R_INGEST,
             "                    self.local.requeue(rest_group, rest_name, later=RETRY_LATER)",
             "                    pass",
             ("tests/test_bridge_answers.py::test_a_redis_outage_in_the_middle_of_a_bridged_batch_strands_none_of_"
              "it",),
             "a Redis outage mid-batch leaves no bridged file claimed"),
    Mutation("relay-takes-an-older-nack", "ipcpool/transport/bridge/relay.py",
             '        return isinstance(nack, dict) and (self.timestamp is None or nack.get("timestamp") == '
             'self.timestamp)',
             "        return isinstance(nack, dict)",
             ("tests/test_bridge_answers.py::test_a_nack_left_by_an_earlier_message_of_the_same_id_does_not_answer_"
              "the_new_one",),
             "a bridged message's writer gets its own nack, never an older one of the same id"),
    Mutation("cluster-records-trusted", "ipcpool/cli/views.py",
             "    return value if isinstance(value, int) and not isinstance(value, bool) else 0",
             "    return int(value)",
             (f"{T_TERM}::test_status_on_redis_escapes_and_survives_a_forged_cluster_record",),
             "status survives a forged cluster record on Redis"),
    Mutation("errors-group-may-be-a-path", "ipcpool/cli/deadletters.py",
             "        if not GROUP_NAME.match(group):  # never a path: `../../x/errors/y` would reach outside the root",
             "        if False:",
             ("tests/test_errors_cli.py::test_errors_commands_never_reach_outside_the_root_through_a_group",),
             "errors show and retry never reach outside the root"),
    Mutation("inbox-folder-claimed", WATCHER,
             "                    elif mask & self._isdir_bit:",
             "                    elif False:",
             ("tests/test_odd_entries.py::test_a_folder_made_in_an_inbox_is_left_alone_with_what_it_holds",),
             "a directory in an inbox is left alone"),
    Mutation("steering-records-group-writable", LOCALROOT,
             ("    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)",
              "        os.fchmod(fd, 0o600)"),
             ("    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o660)",
              "        os.fchmod(fd, 0o660)"),
             (f"{T_OPER}::test_shared_mode_status_is_not_group_writable_and_old_folders_get_their_modes",),
             "shared mode: clock.json and workers.json are the supervisor's alone"),
    Mutation("staging-pruned-under-a-new-worker", WRITES,
             "                if now - os.lstat(path).st_ctime < STAGING_GRACE:",
             "                if False:",
             ("tests/test_recycling.py::test_prune_staging_removes_only_files_of_gone_processes",),
             "pruning never removes a staging file a worker newer than the pid list is writing"),
    Mutation("sender-ignores-the-roots-mode", LAYOUT,
             '        return "shared" if os.stat(root).st_mode & stat.S_ISGID else "private"',
             '        return "private"',
             ("tests/test_containers.py::test_recipe_a_writer_under_another_uid_in_shared_mode",),
             "a sender told no mode writes as the root is (shared into a setgid root)"),
    # -- the review of the pool package ----------------------------------------------------------------------
    Mutation("any-signal-ends-the-wait-for-old-workers", SUP,
             "                             interrupted=self._told_to_stop, still_starting=self.write_starting_status)",
             "                             interrupted=lambda: bool(self._signals), "
             "still_starting=self.write_starting_status)",
             (f"{T_SUPV}::test_a_worker_whose_supervisor_is_sigkilled_finishes_its_message_and_the_successor_"
              "waits_for_it",),
             "a reload or an ignored signal never ends the wait for a predecessor's live worker"),
    Mutation("stop-during-the-wait-takes-processing-back", SUP,
             "        if self._told_to_stop():\n", "        if False:\n",
             (f"{T_SUPV}::test_a_signal_to_stop_while_the_successor_waits_for_old_workers_takes_nothing_up",),
             "stopped while waiting for a predecessor's worker, a supervisor takes nothing up"),
    # A stopped or frozen supervisor is not gone: only the worker's own limit ends an overlong handler then.
    Mutation("worker-without-its-own-handler-limit", "ipcpool/pool/worker.py",
             "        threading.Thread(target=worker.limit_loop, name=\"handler-limit\", daemon=True).start()\n", "",
             ("tests/test_worker_limit.py::test_a_stopped_supervisors_worker_ends_an_overlong_handler_itself_and_"
              "the_message_ends_once",
              "tests/test_worker_limit.py::test_on_redis_a_frozen_supervisor_never_runs_a_sequences_head_beside_"
              "the_one_that_reclaimed_it"),
             "a worker ends a handler past handler_timeout + kill_grace itself, its supervisor stopped or frozen"),
    Mutation("worker-starts-its-queue-under-a-stopped-supervisor", "ipcpool/pool/worker.py",
             "            if self._supervisor_stalled():\n", "            if False:\n",
             ("tests/test_worker_limit.py::test_a_stopped_supervisors_worker_starts_nothing_more_from_its_queue_"
              "until_it_runs_again",),
             "a worker starts nothing queued while its supervisor's loop (and so its lease renewals) is stopped"),
    Mutation("worker-judges-its-supervisor-by-start-time", "ipcpool/pool/worker.py",
             "                    if not _alive(supervisor, born, watch):",
             "                    if not _alive(supervisor, born, None):",
             ("tests/test_clock_jump.py::test_a_wall_clock_step_does_not_make_the_workers_think_their_supervisor_"
              "is_gone",),
             "a wall-clock step never makes workers think their supervisor is gone"),
    Mutation("job-control-stops-the-helpers", SUP,
             "        self.lifecycle.start_helpers()\n", "",
             (f"{T_RELOAD}::test_sigttin_to_a_shell_jobs_whole_process_group_adds_a_worker_and_stops_no_helper",),
             "SIGTTIN to a shell job's process group adds a worker and stops no helper process"),
    Mutation("group-stop-logs-like-a-crash", HANDLE,
             "            log.info(\"worker pid=%d slot=%d outlives the forkserver",
             "            log.warning(\"worker pid=%d slot=%d outlives the forkserver",
             ("tests/test_stopping.py::test_stop_signal_never_handles_a_message_twice",),
             "stopping through the process group (a supported way) logs nothing that reads like a crash"),
    Mutation("redis-nogroup-wedges-the-loop", R_SOURCE,
             '            if "NOGROUP" not in str(exc):\n                raise\n',
             "            raise\n",
             (f"{T_REDIS}::test_a_redis_back_without_its_data_has_its_groups_made_again_and_the_pool_goes_on",),
             "a Redis back without its data has its consumer groups made again"),
    Mutation("schedule-names-differ-by-case", SCHED,
             ("        if spec.name.casefold() in seen:  # names become file names: one folder on a Mac ignores case",
              "        seen.add(spec.name.casefold())"),
             ("        if spec.name in seen:", "        seen.add(spec.name)"),
             (f"{T_SCHED}::test_names_are_unique_and_required",),
             "schedule names are unique whatever their case"),
    # -- delayed delivery and expiry (issue 27): each wire key and each promise ----------------------------------------
    Mutation("not-before-ignored", PIPELINE,
             "        if due is not None and due > now:", "        if False:",
             (f"{T_TIME}::test_a_delayed_message_is_handled_once_not_before_its_time[spool]",
              f"{T_TIME}::test_a_delayed_message_is_handled_once_not_before_its_time[redis]",
              f"{T_TIME}::test_hand_written_windows[spool]"),
             "notBefore: never given to a handler before then (a shell writer's too)"),
    Mutation("send-delay-ignored", CLIENT,
             "        timing = window(delay=delay, not_before=not_before, ttl=ttl, expires_at=expires_at)\n"
             "        if wait:",
             "        timing = window(not_before=not_before, ttl=ttl, expires_at=expires_at)\n        if wait:",
             (f"{T_TIME}::test_a_delayed_message_is_handled_once_not_before_its_time[spool]",),
             "Client.send(delay=...) writes notBefore"),
    Mutation("cli-delay-ignored", "ipcpool/cli/commands.py",
             "    return window(delay=duration(args.delay),", "    return window(delay=None,",
             (f"{T_TIME}::test_the_cli_sends_a_window_and_refuses_one_that_never_opens[spool]",),
             "ipcpool send --delay 30s"),
    Mutation("spool-delayed-held-in-memory-only", D_SPOOL,
             "        rename_noreplace(self.folders.path(group, PROCESSING, key_name), "
             "self.folders.path(group, DELAYED, name))",
             "        raise OSError(5, \"mutated\")",
             (f"{T_TIME}::test_delayed_messages_survive_a_sigkill_and_are_handed_out_once[spool]",),
             "delayed messages are held by the transport (delayed/), durable across a SIGKILL"),
    Mutation("spool-delayed-heap-not-rebuilt-at-start", SOURCE,
             "        self.delayed.load(group)\n", "        self.delayed.heaps.pop(group, None)\n",
             (f"{T_TIME}::test_delayed_messages_survive_a_sigkill_and_are_handed_out_once[spool]",),
             "a restart rebuilds the delayed heap from one listing of delayed/"),
    Mutation("delayed-names-trusted", D_SPOOL,
             ("    if not (due.isascii() and due.isdigit()) or int(due) > LAST_DUE_MS or inbox not in inboxes:",
              "    if not is_message_name(base) or format_for(base) is None:"),
             ("    if not due.isdigit() or not inbox:", "    if not base:"),
             (f"{T_TIME}::test_strangers_in_the_delayed_folder_are_left_alone_and_never_stop_a_start",),
             "a name in delayed/ never sends its file outside its inbox, and never stops a start"),
    Mutation("spool-delayed-not-shown", D_SPOOL,
             "        return len(heap), format_iso(heap[0][0] / 1000)", "        return 0, None",
             (f"{T_TIME}::test_status_shows_what_is_delayed_and_when_the_next_is_due[spool]",),
             "status, top, /metrics: how many are delayed per group and when the next is due"),
    Mutation("redis-delayed-released-again-and-again", R_DELAYS,
             ("  redis.call('DEL', list)\n", "  redis.call('ZREM', KEYS[1], entry)\n"), ("", ""),
             (f"{T_TIME}::test_a_delayed_message_is_handled_once_not_before_its_time[redis]",
              f"{T_TIME}::test_delayed_messages_survive_a_sigkill_and_are_handed_out_once[redis]"),
             "delayed on Redis: moved back into the stream once, whoever gets there first"),
    Mutation("redis-delayed-held-in-memory-only", R_SOURCE,
             "            self.delays.hold(group, ref, until)\n",
             "            self.later[key] = self.clock() + max(until - time.time(), 0.001)\n",
             (f"{T_TIME}::test_delayed_messages_survive_a_sigkill_and_are_handed_out_once[redis]",
              f"{T_TIME}::test_status_shows_what_is_delayed_and_when_the_next_is_due[redis]"),
             "delayed on Redis: held in the group's sorted set, not by a supervisor, durable across a SIGKILL"),
    Mutation("redis-delayed-not-shown", R_DELAYS,
             "\"delayed\": int(count)", "\"delayed\": 0",
             (f"{T_TIME}::test_status_shows_what_is_delayed_and_when_the_next_is_due[redis]",),
             "status on Redis: how many are delayed per group"),
    Mutation("expires-at-ignored", PIPELINE,
             "        if expires is not None and (expires <= now or (due is not None and expires <= due)):",
             "        if False:",
             (f"{T_TIME}::test_an_expired_message_is_dead_lettered_and_its_sender_nacked[spool]",
              f"{T_TIME}::test_an_expired_message_is_dead_lettered_and_its_sender_nacked[redis]",
              f"{T_TIME}::test_a_message_that_expires_while_it_waits_nacks_an_async_sender[spool]"),
             "expiresAt: not given to a handler after then, dead-lettered as expired, its sender nacked"),
    Mutation("expiry-before-due-delayed-anyway", PIPELINE,
             "(expires <= now or (due is not None and expires <= due))", "(expires <= now)",
             (f"{T_TIME}::test_hand_written_windows[spool]", f"{T_TIME}::test_hand_written_windows[redis]"),
             "a hand-written expiresAt before notBefore is expired"),
    Mutation("expired-nacked-as-failed", PIPELINE,
             "_summary_of(message), \"rejected\")\n", "_summary_of(message), \"failed\")\n",
             (f"{T_TIME}::test_an_expired_message_is_dead_lettered_and_its_sender_nacked[spool]",),
             "an expired message's sender gets MessageRejected, reason expired"),
    Mutation("send-ttl-ignored", CLIENT,
             "        timing = window(delay=delay, not_before=not_before, ttl=ttl, expires_at=expires_at)\n"
             "        if wait:",
             "        timing = window(delay=delay, not_before=not_before, expires_at=expires_at)\n        if wait:",
             (f"{T_TIME}::test_a_window_that_can_never_open_is_refused_before_it_is_sent",),
             "Client.send(ttl=...) writes expiresAt"),
    Mutation("sender-ack-wait-ignores-the-delay", CLIENT,
             "        early = max(0.0, message.due - time.time()) if message.due else 0.0",
             "        early = 0.0",
             (f"{T_TIME}::test_a_sender_waiting_for_a_delayed_ack_waits_out_the_delay_without_re_sending[spool]",),
             "a sender waiting for a delayed message's ack waits out the delay before it re-sends"),
    Mutation("send-window-that-never-opens-accepted", "ipcpool/msgtime.py",
             "        if due is not None and expires <= due:", "        if False:",
             (f"{T_TIME}::test_a_window_that_can_never_open_is_refused_before_it_is_sent",
              f"{T_TIME}::test_the_cli_sends_a_window_and_refuses_one_that_never_opens[spool]"),
             "expiresAt before notBefore is refused at send time (exit 2 from the CLI)"),
    # -- ordering (issue 27): each key, and each guarantee of the README's "Ordering" --------------------------------
    Mutation("sequence-runs-side-by-side", ORDERING,
             "        if line is None:\n            self.lines[seq] = deque((ref,))",
             "        if True:\n            self.lines[seq] = deque((ref,))",
             (f"{T_UNITS}::test_a_sequence_has_one_message_out_at_a_time_in_order_while_the_rest_keep_the_pool_busy",
              f"{T_ORDER}::test_each_key_runs_one_message_at_a_time_in_publish_order_and_keys_run_side_by_side[spool]"),
             "ordering: at most one message of a sequence in a handler, in publish order"),
    Mutation("sequence-redelivery-goes-last", ORDERING,
             "        if line[0] == ref:\n            self.running.discard(seq)\n",
             "        if line[0] == ref:\n            self.running.discard(seq)\n            line.rotate(-1)\n",
             (f"{T_UNITS}::test_a_head_that_killed_its_worker_goes_again_before_what_is_behind_it_and_poison_moves_"
              "the_line_on",
              f"{T_ORDER}::test_a_redelivery_goes_before_what_is_behind_it_and_poison_or_failure_moves_the_line_on"
              "[spool]"),
             "ordering: a delivery that killed or hung a worker goes again before anything behind it"),
    Mutation("sequence-stuck-after-poison", SOURCE,
             "        self._next_in_line(key)\n        self._unblock(key)\n        return done",
             "        self._unblock(key)\n        return done",
             (f"{T_ORDER}::test_a_redelivery_goes_before_what_is_behind_it_and_poison_or_failure_moves_the_line_on"
              "[spool]",),
             "ordering: a message that turns poison goes to errors/ and the sequence moves on"),
    Mutation("sequence-stuck-after-failure", SOURCE,
             "        self.taken.discard(key)\n        if key in self._in_line:\n            self._next_in_line(key)\n",
             "        self.taken.discard(key)\n",
             (f"{T_ORDER}::test_a_redelivery_goes_before_what_is_behind_it_and_poison_or_failure_moves_the_line_on"
              "[spool]",),
             "ordering: a message that fails after its retries goes to errors/ and the sequence moves on"),
    Mutation("expired-in-line-waits-its-turn", ORDERING,
             "    if fmt is None or EXPIRES_AT.encode() not in data:",
             "    if True:",
             (f"{T_TIME}::test_a_message_that_expires_in_its_sequence_line_is_nacked_while_the_head_still_runs[spool]",
              f"{T_TIME}::test_a_message_that_expires_in_its_sequence_line_is_nacked_while_the_head_still_runs[redis]"),
             "expiry: a message waiting in a sequence line is dead-lettered (out of turn) once past expiresAt"),
    Mutation("sequences-share-one-line", SEQUENCES,
             "            seq = (key[0], ordering_key)",
             '            seq = (key[0], "")',
             (f"{T_ORDER}::test_a_held_sequence_holds_no_worker_and_status_shows_what_waits_behind_it[spool]",),
             "ordering: different sequences run in parallel; a held one holds no worker"),
    Mutation("unordered-files-read-for-a-key", SOURCE,
             "            if key[0] in ordered_groups or MARK in key[1]:",
             "            if True:",
             (f"{T_ORDER}::test_an_unmarked_file_in_a_group_without_ordering_is_not_read_for_a_key",),
             "ordering: messages without the keys, in groups without the settings, behave as today"),
    Mutation("ordering-fifo-ignored", ORDERING,
             "    return {name: Rule(g.ordering == FIFO, g.ordering_field)",
             "    return {name: Rule(False, g.ordering_field)",
             (f"{T_UNITS}::test_fifo_puts_a_whole_group_in_line_legacy_bodies_included_and_a_field_keys_plain_json",
              f"{T_ORDER}::test_fifo_and_ordering_field_order_the_original_agents_plain_files[spool]"),
             "[groups.<name>] ordering = \"fifo\": the whole group is one sequence"),
    Mutation("ordering-field-ignored", ORDERING,
             "        value = payload.get(rule.field)",
             "        value = None",
             (f"{T_UNITS}::test_fifo_puts_a_whole_group_in_line_legacy_bodies_included_and_a_field_keys_plain_json",
              f"{T_ORDER}::test_fifo_and_ordering_field_order_the_original_agents_plain_files[spool]"),
             "[groups.<name>] ordering_field: the key of a message without orderingKey, from its payload"),
    Mutation("ordering-setting-unchecked", "ipcpool/config.py",
             '        _one_of(c, f"[groups.{name}] ordering", group.ordering, ORDERINGS)\n',
             "",
             (f"{T_ORDER}::test_bad_ordering_settings_stop_check_with_exit_2_naming_file_key_and_problem",),
             "a bad ordering value stops run/check with exit 2 naming file, key and problem"),
    Mutation("ordering-key-unchecked", "ipcpool/message.py",
             "    if ORDERING_KEY in obj:\n        check_ordering_key(obj[ORDERING_KEY])\n",
             "",
             (f"{T_ORDER}::test_an_envelope_with_an_invalid_ordering_key_is_refused_with_the_reason",),
             "wire: orderingKey is a string of 1-200 characters"),
    Mutation("client-sends-no-ordering-key", "ipcpool/message.py",
             "        envelope[ORDERING_KEY] = check_ordering_key(ordering_key)",
             "        check_ordering_key(ordering_key)",
             (f"{T_ORDER}::test_cli_send_ordering_key_writes_the_wire_key_and_the_mark",
              f"{T_ORDER}::test_each_key_runs_one_message_at_a_time_in_publish_order_and_keys_run_side_by_side[spool]"),
             "Client.send(..., ordering_key=) and send --ordering-key put orderingKey on the wire"),
    Mutation("restart-order-by-name-only", SEQUENCES,
             "        stamped.sort()",
             "        stamped.sort(key=lambda stamp: stamp[1])",
             (f"{T_ORDER}::test_after_a_restart_a_sequence_goes_by_modification_time_then_name[spool]",),
             "ordering: after a restart or a rescan, by modification time then name"),
    Mutation("client-times-not-stamped", WRITES,
             "            if is_marked(name):\n                stamp_in_order(tmp_path)",
             "            if False:\n                stamp_in_order(tmp_path)",
             (f"{T_ORDER}::test_after_a_restart_a_sequence_goes_by_modification_time_then_name[spool]",),
             "ordering: one writer's order holds across restarts (rising modification times)"),
    Mutation("sequence-waiting-not-shown", SOURCE,
             '                entry["waiting"] = waiting',
             "                pass",
             (f"{T_ORDER}::test_a_held_sequence_holds_no_worker_and_status_shows_what_waits_behind_it[spool]",),
             "status, top and /metrics show per group what waits behind a busy sequence"),
    Mutation("sequence-waiting-not-in-metrics", "ipcpool/ops/metrics.py",
             "        waiting.add_metric([name], behind)",
             "        waiting.add_metric([name], 0)",
             (f"{T_ORDER}::test_a_held_sequence_holds_no_worker_and_status_shows_what_waits_behind_it[spool]",),
             "/metrics: ipcpool_sequence_waiting"),
    Mutation("ordering-reload-applied-half", RELOAD,
             "    if rules_of(old) != rules_of(new):",
             "    if False:",
             (f"{T_ORDER}::test_a_reload_that_changes_ordering_is_refused_until_a_restart",),
             "a reload that changes [groups.<name>] ordering is refused: restart to apply it"),
    Mutation("redis-lines-ignored", R_LINES,
             "        if key in self.heads:\n            return True",
             "        if True:\n            return True",
             (f"{T_ORDER}::test_each_key_runs_one_message_at_a_time_in_publish_order_and_keys_run_side_by_side[redis]",
              f"{T_ORDER}::test_chaos_on_redis_two_supervisors_share_the_lines_one_sigkilled_for_good"),
             "ordering on Redis: one message of a sequence at a time across supervisors, stream order"),
    Mutation("redis-publish-leaves-the-line-empty", R_SCRIPTS,
             "  redis.call('RPUSH', KEYS[6], id)\n",
             "",
             (f"{T_ORDER}::test_chaos_on_redis_two_supervisors_share_the_lines_one_sigkilled_for_good",),
             "ordering on Redis: the line is pushed with the entry, in stream order"),
    Mutation("redis-finished-head-kept", R_SCRIPTS,
             "    redis.call('LPOP', line)\n",
             "    break\n",
             (f"{T_ORDER}::test_a_redelivery_goes_before_what_is_behind_it_and_poison_or_failure_moves_the_line_on"
              "[redis]",),
             "ordering on Redis: a finished head leaves its line, and the sequence moves on"),
    Mutation("redis-bridge-reads-no-key", R_INGEST,
             ("                            relay=relay, sequence=key_at_publish(self.local.sequences.rules, group, "
              "name,\n                                                                 result.data))"),
             "                            relay=relay)",
             (f"{T_ORDER}::test_fifo_and_ordering_field_order_the_original_agents_plain_files[redis]",),
             "ordering on Redis: plain files through the bridge get their group's sequences"),
    # -- order and time together (issue 27): a delayed message of a sequence, an expired one -------------------------
    Mutation("sequence-held-by-its-delayed-head", SOURCE,
             "        self.taken.discard(key)\n        self._next_in_line(key)\n",
             "        self.taken.discard(key)\n",
             (f"{T_ORDER}::test_a_delayed_message_of_a_sequence_takes_its_place_at_its_due_time_and_an_expired_one_moves_it_"
              "on[spool]",),
             "ordering with notBefore: a delayed message steps out of its line; the sequence goes on without it"),
    Mutation("memory-sequence-held-by-its-delayed-head", "ipcpool/transport/memory.py",
             "        self.delayed.add((group, ref))\n        self._next_in_line((group, ref))\n",
             "        self.delayed.add((group, ref))\n",
             (f"{T_UNITS}::test_a_delayed_message_of_a_sequence_steps_out_and_rejoins_its_line_at_its_end_when_due_"
              "and_expiry_moves_it_on",),
             "ordering with notBefore on the in-memory transport: the line goes on, the delayed one rejoins its end"),
    Mutation("redis-sequence-held-by-its-delayed-head", R_SOURCE,
             "        self.lines.finished(key)  # out of the stream: its line moves on",
             "        pass  # out of the stream: its line moves on",
             (f"{T_ORDER}::test_a_delayed_message_of_a_sequence_takes_its_place_at_its_due_time_and_an_expired_one_moves_it_"
              "on[redis]",),
             "ordering with notBefore on Redis: a delayed entry leaves its line here; the sequence goes on"),
    Mutation("redis-released-entry-outside-its-line", R_DELAYS,
             "      if fields[i] == 'k' then redis.call('RPUSH', ARGV[4] .. fields[i + 1], id) end\n",
             "",
             (f"{T_ORDER}::test_a_delayed_message_of_a_sequence_takes_its_place_at_its_due_time_and_an_expired_one_moves_it_"
              "on[redis]",),
             "ordering with notBefore on Redis: a due entry joins the end of its line with the XADD"),
)
# -- running ----------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    mutation: Mutation
    verdict: str  # "caught", "survived", "error"
    seconds: float
    detail: str = ""


def check_table(mutations: Sequence[Mutation], repo: Path = REPO) -> list[str]:
    """Problems with the table itself: an old text not found exactly once, a duplicate name."""
    problems: list[str] = []
    seen: set[str] = set()
    for m in mutations:
        if m.name in seen:
            problems.append(f"{m.name}: the name is used twice")
        seen.add(m.name)
        path = repo / m.file
        if not path.is_file():
            problems.append(f"{m.name}: {m.file} does not exist")
            continue
        text = path.read_text()
        try:
            edits = m.edits()
        except ValueError as exc:
            problems.append(str(exc))
            continue
        for old, new in edits:
            count = text.count(old)
            if count != 1:
                problems.append(f"{m.name}: old text found {count} times in {m.file} (must be once): {old[:80]!r}")
            if old == new:
                problems.append(f"{m.name}: the new text is the old one")
        if not m.tests:
            problems.append(f"{m.name}: no tests named")
    return problems


def tracked_files(repo: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                         check=True, capture_output=True).stdout.decode()
    return [name for name in out.split("\0") if name and (repo / name).is_file()]


def make_copy(repo: Path, names: Sequence[str], label: str) -> Path:
    scratch = Path(tempfile.mkdtemp(prefix=f"ipcpool-mutate-{label}-"))
    for name in names:
        target = scratch / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, target)
    return scratch


def apply(scratch: Path, mutation: Mutation) -> None:
    path = scratch / mutation.file
    text = path.read_text()
    for old, new in mutation.edits():
        if text.count(old) != 1:
            raise RuntimeError(f"{mutation.name}: old text not found exactly once in {mutation.file}")
        text = text.replace(old, new)
    path.write_text(text)


def scratch_env(scratch: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("IPCPOOL_ROOT", "IPCPOOL_CONFIG", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER"):
        env.pop(name, None)
    env["PYTHONPATH"] = str(scratch)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    # A test skipped for a missing tool catches nothing: the baseline fails instead, naming the tool
    # (a full run once counted a mutation as survived because libfaketime was not installed).
    env.update(IPCPOOL_REQUIRE_TOOLS="1", IPCPOOL_REQUIRE_REDIS="1", IPCPOOL_REQUIRE_NODE="1")
    return env


def check_import_path(scratch: Path) -> None:
    """The copy's ipcpool, not the installed one, must be what the tests import."""
    out = subprocess.run([sys.executable, "-c", "import ipcpool; print(ipcpool.__file__)"], cwd=scratch,
                         env=scratch_env(scratch), capture_output=True, text=True, check=True).stdout.strip()
    if not Path(out).resolve().is_relative_to(scratch.resolve()):
        raise RuntimeError(f"the tests would import {out}, not the scratch copy in {scratch}")


_RUNNING: dict[int, Path] = {}  # pytest process -> its scratch copy, for a clean stop on Ctrl-C or SIGTERM


def run_tests(scratch: Path, tests: Sequence[str], *, workers: int = 0, stop_first: bool = True) -> tuple[int, str]:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={scratch / '.pytest'}",
               f"--timeout={TEST_TIMEOUT}", "-n", str(workers), *(["-x"] if stop_first else []), *tests]
    proc = subprocess.Popen(command, cwd=scratch, env=scratch_env(scratch), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    _RUNNING[proc.pid] = scratch
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        stop_pytest(proc.pid, scratch)
        out, _ = proc.communicate()
        return -1, out + f"\n(stopped after {RUN_TIMEOUT}s)"
    finally:
        _RUNNING.pop(proc.pid, None)
        kill_leftovers(scratch)
    return proc.returncode, out


def stop_pytest(pid: int, scratch: Path) -> None:
    """SIGINT first, so its fixtures stop the supervisors they started; then the whole session."""
    try:
        os.kill(pid, signal.SIGINT)
        for _ in range(300):
            time.sleep(0.1)
            os.kill(pid, 0)  # raises once it is gone
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                break
    except (ProcessLookupError, OSError):
        pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    kill_leftovers(scratch)


def kill_leftovers(scratch: Path) -> None:
    """SIGKILL any process still working in this scratch copy (a supervisor a killed test run left behind).

    Only processes whose working directory or command line is inside the copy,
    which this script made: nothing else is touched.
    """
    marker = f"{scratch}/"
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"{cwd}/".startswith(marker) or marker in cmdline:
            try:
                os.kill(int(entry), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def run_one(repo: Path, names: Sequence[str], mutation: Mutation) -> Outcome:
    """``repo`` is the snapshot taken at the start, so edits made meanwhile never mix into a run."""
    started = time.monotonic()
    scratch = make_copy(repo, names, mutation.name)
    try:
        apply(scratch, mutation)
        code, out = run_tests(scratch, mutation.tests)
    except Exception as exc:  # noqa: BLE001 - reported as this mutation's error, the others go on
        return Outcome(mutation, "error", time.monotonic() - started, repr(exc))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.monotonic() - started
    lines = out.strip().splitlines()
    # what failed and why: pytest's "E" lines (the assertion), then its summary
    reasons = [line for line in lines if line.startswith("E ")][:8]
    tail = "\n".join([*reasons, *lines[-6:]])
    if code == 1:
        return Outcome(mutation, "caught", elapsed, tail)
    if code == 0:
        return Outcome(mutation, "survived", elapsed, tail)
    if code == -1:
        return Outcome(mutation, "caught", elapsed, "the tests hung until the run was killed\n" + tail)
    return Outcome(mutation, "error", elapsed, f"pytest exit code {code}\n{tail}")


def baseline(repo: Path, names: Sequence[str], mutations: Sequence[Mutation], workers: int) -> tuple[bool, str]:
    tests = sorted({t for m in mutations for t in m.tests})
    scratch = make_copy(repo, names, "baseline")
    try:
        check_import_path(scratch)
        code, out = run_tests(scratch, tests, workers=workers, stop_first=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return code == 0, "\n".join(out.strip().splitlines()[-30:])


def table(outcomes: Sequence[Outcome]) -> str:
    lines = ["| mutation | promise | test(s) that must catch it | caught |", "|---|---|---|---|"]
    for o in outcomes:
        tests = "<br>".join(f"`{t.split('::', 1)[1]}`" if "::" in t else f"`{t}`" for t in o.mutation.tests)
        mark = {"caught": "yes", "survived": "**no**", "error": "**error**"}[o.verdict]
        lines.append(f"| `{o.mutation.name}` | {o.mutation.promise} | {tests} | {mark} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the mutations and exit")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="run only this mutation "
                        "(repeatable)")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="mutations run at once (default 1)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the named tests")
    parser.add_argument("-v", "--verbose", action="store_true", help="show how each mutation was caught "
                        "(the end of its pytest output), not only the ones that were not")
    parser.add_argument("--baseline-workers", type=int, default=2, help="pytest-xdist workers for the baseline "
                        "run (default 2)")
    args = parser.parse_args(argv)

    problems = check_table(MUTATIONS)
    if problems:
        print("the mutation table does not match the code:", *problems, sep="\n  ", file=sys.stderr)
        return 2
    selected = [m for m in MUTATIONS if not args.only or m.name in args.only]
    unknown = set(args.only) - {m.name for m in MUTATIONS}
    if unknown:
        print(f"unknown mutation(s): {', '.join(sorted(unknown))}; see --list", file=sys.stderr)
        return 2
    if args.list:
        for m in selected:
            print(f"{m.name}  [{m.file}]  {m.promise}")
            for t in m.tests:
                print(f"    {t}")
        return 0

    names = tracked_files(REPO)
    snapshot = make_copy(REPO, names, "snapshot")  # every copy is made from this, not from the working tree
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        return _run(args, snapshot, names, selected)
    except KeyboardInterrupt:
        for pid, scratch in list(_RUNNING.items()):
            stop_pytest(pid, scratch)
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)


def _interrupted(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace, snapshot: Path, names: Sequence[str], selected: Sequence[Mutation]) -> int:
    if not args.no_baseline:
        print(f"baseline: the {len({t for m in selected for t in m.tests})} named tests on an unmutated copy ...",
              flush=True)
        ok, out = baseline(snapshot, names, selected, args.baseline_workers)
        if not ok:
            print(out, "\nbaseline failed: the tests fail without any mutation, so they prove nothing",
                  file=sys.stderr)
            return 1
        print("baseline: passed", flush=True)

    outcomes: list[Outcome] = []

    def report(outcome: Outcome) -> None:
        outcomes.append(outcome)
        print(f"[{len(outcomes)}/{len(selected)}] {outcome.verdict:8} {outcome.mutation.name} "
              f"({outcome.seconds:.0f}s)", flush=True)
        if outcome.verdict != "caught" or args.verbose:
            print("    " + outcome.detail.replace("\n", "\n    "), flush=True)

    pool = ThreadPoolExecutor(max_workers=max(1, args.jobs))
    futures = [pool.submit(run_one, snapshot, names, m) for m in selected]
    try:
        for future in as_completed(futures):
            report(future.result())
    finally:
        for future in futures:
            future.cancel()
        pool.shutdown(wait=False, cancel_futures=True)

    order = {m.name: i for i, m in enumerate(selected)}
    outcomes.sort(key=lambda o: order[o.mutation.name])
    print()
    print(table(outcomes))
    survived = [o.mutation.name for o in outcomes if o.verdict == "survived"]
    errors = [o.mutation.name for o in outcomes if o.verdict == "error"]
    print(f"\n{len(outcomes) - len(survived) - len(errors)} of {len(outcomes)} caught"
          + (f"; survived: {', '.join(survived)}" if survived else "")
          + (f"; errors: {', '.join(errors)}" if errors else ""))
    return 1 if survived or errors else 0


if __name__ == "__main__":
    sys.exit(main())
