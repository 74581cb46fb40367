"""ipcpool.config: TOML to frozen, validated config objects with clear errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ipcpool.config import (
    AckConfig,
    Config,
    GroupConfig,
    HeartbeatConfig,
    PoolConfig,
    RetryConfig,
    SpoolConfig,
    ack_retry_window,
    load_config,
    parse_config,
)
from ipcpool.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def _load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    path = tmp_path / "ipcpool.toml"
    path.write_text(text)
    return load_config(path, environ={} if environ is None else environ)


def _error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "ipcpool.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


# -- defaults -----------------------------------------------------------------------


def test_empty_file_gives_defaults(tmp_path):
    config = _load(tmp_path, "")
    assert config.spool == SpoolConfig()
    assert config.pool == PoolConfig()
    assert config.retry == RetryConfig()
    assert config.heartbeat == HeartbeatConfig()
    assert config.ack == AckConfig()
    assert config.handlers == {}
    assert config.groups == {}
    assert config.path == str(tmp_path / "ipcpool.toml")


def test_default_values():
    config = parse_config({}, environ={})
    assert config.path is None
    assert config.spool.root == "data/ipc"
    assert config.spool.groups == ("main",)
    assert config.spool.format == "json"
    assert config.spool.durability == "process"
    assert config.spool.mode == "private"
    assert config.spool.watcher == "native"
    assert config.spool.max_message_bytes == 1024 * 1024
    assert config.pool.workers == 2
    assert config.pool.max_deliveries == 3
    assert config.retry.attempts == 3
    assert config.ack.max_retries == 3
    assert config.ack.retention == 86400.0
    assert config.heartbeat.interval == 2.0


def test_config_objects_are_frozen():
    config = parse_config({}, environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.pool = PoolConfig()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.pool.workers = 9  # type: ignore[misc]


def test_replace_returns_a_new_config():
    config = parse_config({}, environ={})
    other = dataclasses.replace(config, pool=PoolConfig(workers=8))
    assert other.pool.workers == 8
    assert config.pool.workers == 2


# -- every section ---------------------------------------------------------------------


FULL = """
[spool]
root = "/srv/ipc"
groups = ["main", "group1", "g-2"]
format = "msgpack"
durability = "power"
mode = "shared"
watcher = "polling"
settle_time = 0.5
rescan_interval = 7.5
max_message_bytes = 4096
max_queued = 100
tmp_max_age = 60.0
response_retention = 120.0

[pool]
workers = 4
prefetch = 2
handler_timeout = 12.5
max_deliveries = 5
max_tasks_per_worker = 1000
max_memory_mb = 512
shutdown_grace = 10.0
kill_grace = 1.0
max_boot_failures = 7

[retry]
attempts = 4
delay = 0.25
backoff = 3.0
max_delay = 9.0

[heartbeat]
interval = 0.5
miss_limit = 6

[ack]
timeout = 2.0
max_retries = 2
retry_delay = 1.0
backoff = 2.0
jitter = 0.5
retention = 3600.0

[handlers]
task = "examples.handlers:handle_task"
legacy = "pkg.mod:legacy_fn"
"*" = "pkg.mod:any_fn"
"billing.invoice:v2" = "pkg.billing:invoice"

[groups.group1]
allowed_types = ["task", "command"]

[groups.main]
"""


def test_every_section_and_key(tmp_path):
    config = _load(tmp_path, FULL)
    assert config.spool == SpoolConfig(
        root="/srv/ipc", groups=("main", "group1", "g-2"), format="msgpack", durability="power", mode="shared",
        watcher="polling", settle_time=0.5, rescan_interval=7.5, max_message_bytes=4096, max_queued=100,
        tmp_max_age=60.0, response_retention=120.0,
    )
    assert config.pool == PoolConfig(
        workers=4, prefetch=2, handler_timeout=12.5, max_deliveries=5, max_tasks_per_worker=1000,
        max_memory_mb=512, shutdown_grace=10.0, kill_grace=1.0, max_boot_failures=7,
    )
    assert config.retry == RetryConfig(attempts=4, delay=0.25, backoff=3.0, max_delay=9.0)
    assert config.heartbeat == HeartbeatConfig(interval=0.5, miss_limit=6)
    assert config.ack == AckConfig(timeout=2.0, max_retries=2, retry_delay=1.0, backoff=2.0, jitter=0.5,
                                   retention=3600.0)
    assert config.handlers == {
        "task": "examples.handlers:handle_task",
        "legacy": "pkg.mod:legacy_fn",
        "*": "pkg.mod:any_fn",
        "billing.invoice:v2": "pkg.billing:invoice",
    }
    assert config.groups == {"group1": GroupConfig(allowed_types=("task", "command")), "main": GroupConfig()}
    assert isinstance(config.spool.groups, tuple)


def test_unknown_key_rejected_with_file_and_key(tmp_path):
    message = _error(tmp_path, "[pool]\nworkers = 2\nworkerz = 3\n")
    assert "[pool]" in message
    assert "workerz" in message
    assert "unknown key" in message


def test_unknown_key_in_group_section_rejected(tmp_path):
    message = _error(tmp_path, "[groups.main]\nallowed = [\"task\"]\n")
    assert "allowed" in message
    assert "groups.main" in message


def test_unknown_section_rejected_with_file_and_section(tmp_path):
    message = _error(tmp_path, "[workers]\ncount = 2\n")
    assert "[workers]" in message
    assert "not a known section" in message


def test_section_that_is_not_a_table_rejected(tmp_path):
    message = _error(tmp_path, "pool = 5\n")
    assert "[pool]" in message
    assert "must be a table" in message


# -- wrong types ---------------------------------------------------------------------------


def test_wrong_type_names_key_and_value(tmp_path):
    message = _error(tmp_path, '[pool]\nworkers = "four"\n')
    assert "[pool] workers" in message
    assert '"four"' in message
    assert "integer" in message


@pytest.mark.parametrize(
    ("text", "where", "shown"),
    [
        ("[pool]\nworkers = true\n", "[pool] workers", "true"),
        ("[pool]\nworkers = 2.5\n", "[pool] workers", "2.5"),
        ("[spool]\nsettle_time = \"2s\"\n", "[spool] settle_time", '"2s"'),
        ("[spool]\nsettle_time = false\n", "[spool] settle_time", "false"),
        ("[spool]\nroot = 5\n", "[spool] root", "5"),
        ("[spool]\ngroups = \"main\"\n", "[spool] groups", '"main"'),
        ("[spool]\ngroups = [\"main\", 2]\n", "[spool] groups", "2"),
        ("[retry]\nattempts = \"3\"\n", "[retry] attempts", '"3"'),
        ("[heartbeat]\ninterval = [1]\n", "[heartbeat] interval", "[1]"),
        ("[ack]\ntimeout = {a = 1}\n", "[ack] timeout", "a table"),
        ("[groups.main]\nallowed_types = \"task\"\n", "allowed_types", '"task"'),
    ],
)
def test_wrong_types_rejected(tmp_path, text, where, shown):
    message = _error(tmp_path, text)
    assert where in message
    assert shown in message


def test_integers_are_accepted_for_floats(tmp_path):
    config = _load(tmp_path, "[spool]\nsettle_time = 1\n[pool]\nhandler_timeout = 30\n[retry]\ndelay = 0\n")
    assert config.spool.settle_time == 1.0
    assert isinstance(config.spool.settle_time, float)
    assert isinstance(config.pool.handler_timeout, float)
    assert isinstance(config.retry.delay, float)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[pool]\nworkers = 0\n", "[pool] workers"),
        ("[pool]\nworkers = -1\n", "[pool] workers"),
        ("[pool]\nhandler_timeout = 0\n", "[pool] handler_timeout"),
        ("[pool]\nmax_deliveries = 0\n", "[pool] max_deliveries"),
        ("[retry]\nattempts = 0\n", "[retry] attempts"),
        ("[retry]\nbackoff = 0.5\n", "[retry] backoff"),
        ("[ack]\nbackoff = 0.9\n", "[ack] backoff"),
        ("[ack]\nmax_retries = -1\n", "[ack] max_retries"),
        ("[heartbeat]\ninterval = 0\n", "[heartbeat] interval"),
        ("[spool]\nmax_message_bytes = 0\n", "[spool] max_message_bytes"),
        ("[spool]\nrescan_interval = -2.0\n", "[spool] rescan_interval"),
        ("[spool]\nformat = \"xml\"\n", "[spool] format"),
        ("[spool]\ndurability = \"disk\"\n", "[spool] durability"),
        ("[spool]\nmode = \"public\"\n", "[spool] mode"),
        ("[spool]\nwatcher = \"inotify\"\n", "[spool] watcher"),
        ("[spool]\nroot = \"\"\n", "[spool] root"),
    ],
)
def test_out_of_range_values_rejected(tmp_path, text, where):
    assert where in _error(tmp_path, text)


def test_zero_allowed_where_documented(tmp_path):
    config = _load(tmp_path, "[spool]\nsettle_time = 0\nmax_queued = 0\n[pool]\nmax_tasks_per_worker = 0\n"
                             "max_memory_mb = 0\n[ack]\nmax_retries = 0\nretry_delay = 0\n")
    assert config.spool.settle_time == 0.0
    assert config.ack.max_retries == 0


# -- IPCPOOL_ROOT ------------------------------------------------------------------------------------


def test_ipcpool_root_overrides_the_file(tmp_path):
    config = _load(tmp_path, '[spool]\nroot = "data/ipc"\n', environ={"IPCPOOL_ROOT": "/elsewhere/ipc"})
    assert config.spool.root == "/elsewhere/ipc"


def test_ipcpool_root_overrides_the_default():
    assert parse_config({}, environ={"IPCPOOL_ROOT": "/x"}).spool.root == "/x"


def test_empty_ipcpool_root_is_ignored(tmp_path):
    config = _load(tmp_path, '[spool]\nroot = "mine"\n', environ={"IPCPOOL_ROOT": ""})
    assert config.spool.root == "mine"


def test_environ_argument_is_used_instead_of_os_environ(tmp_path, monkeypatch):
    monkeypatch.setenv("IPCPOOL_ROOT", "/from/os/environ")
    assert _load(tmp_path, '[spool]\nroot = "mine"\n', environ={}).spool.root == "mine"


# -- names and refs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bad name", "-lead", "a/b", "..", "x" * 65, ""])
def test_invalid_group_names_in_spool_groups(tmp_path, name):
    message = _error(tmp_path, f'[spool]\ngroups = ["main", "{name}"]\n')
    assert "[spool] groups" in message
    assert repr(name) in message


def test_group_name_with_trailing_newline_rejected(tmp_path):
    message = _error(tmp_path, '[spool]\ngroups = ["main\\n"]\n')
    assert "[spool] groups" in message


def test_invalid_group_table_name_rejected(tmp_path):
    message = _error(tmp_path, '[groups."bad name"]\nallowed_types = []\n')
    assert "bad name" in message
    assert "not a valid group name" in message


@pytest.mark.parametrize(
    "ref", ["no_colon", "mod:", ":func", "mod:func:extra", "mod:func-name", "1mod:func", "mod/sub:func", "a b:c"]
)
def test_invalid_handler_refs_rejected(tmp_path, ref):
    message = _error(tmp_path, f'[handlers]\ntask = "{ref}"\n')
    assert "[handlers] task" in message
    assert f'"{ref}"' in message
    assert "module:function" in message


def test_handler_ref_must_be_a_string(tmp_path):
    message = _error(tmp_path, "[handlers]\ntask = 5\n")
    assert "[handlers] task" in message


def test_invalid_handler_type_key_rejected(tmp_path):
    message = _error(tmp_path, '[handlers]\n"bad type" = "m:f"\n')
    assert "bad type" in message
    assert "not a valid message type name" in message


def test_handlers_must_be_a_table(tmp_path):
    assert "[handlers]" in _error(tmp_path, 'handlers = "m:f"\n')


# -- the ack retention rule ---------------------------------------------------------------------------------


def test_ack_retry_window():
    ack = AckConfig(timeout=30.0, max_retries=3, retry_delay=5.0, backoff=1.0, jitter=0.0)
    assert ack_retry_window(ack) == 30.0 * 4 + 5.0 * 3
    ack = AckConfig(timeout=2.0, max_retries=2, retry_delay=1.0, backoff=2.0, jitter=0.5)
    assert ack_retry_window(ack) == 2.0 * 3 + (1.0 + 0.5) + (2.0 + 0.5)


def test_ack_retention_shorter_than_retry_window_rejected(tmp_path):
    # window = 30 * 4 + 5 * 3 = 135 s
    message = _error(tmp_path, "[ack]\ntimeout = 30.0\nmax_retries = 3\nretry_delay = 5.0\nretention = 100.0\n")
    assert "[ack] retention" in message
    assert "135" in message


def test_ack_retention_equal_to_retry_window_rejected(tmp_path):
    assert "[ack] retention" in _error(tmp_path, "[ack]\ntimeout = 10.0\nmax_retries = 0\nretention = 10.0\n")


def test_ack_retention_longer_than_retry_window_accepted(tmp_path):
    config = _load(tmp_path, "[ack]\ntimeout = 10.0\nmax_retries = 0\nretention = 10.5\n")
    assert config.ack.retention == 10.5


# -- files ------------------------------------------------------------------------------------------------------


def test_invalid_toml_rejected(tmp_path):
    message = _error(tmp_path, "[pool\nworkers = 2\n")
    assert "invalid TOML" in message


def test_duplicate_toml_key_rejected(tmp_path):
    assert "invalid TOML" in _error(tmp_path, "[pool]\nworkers = 2\nworkers = 3\n")


def test_missing_file_rejected(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(path) in str(info.value)
    assert "not found" in str(info.value)


def test_directory_instead_of_file_rejected(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, environ={})
    assert str(tmp_path) in str(info.value)


def test_non_utf8_file_is_a_config_error(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[spool]\nroot = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(path) in str(info.value)


def test_parse_config_source_name_is_used_in_messages():
    with pytest.raises(ConfigError, match=r"^my-source: \[pool\] workers"):
        parse_config({"pool": {"workers": "x"}}, "my-source", environ={})


@pytest.mark.parametrize("name", ["prod.toml", "dev.toml"])
def test_repository_configs_load(name):
    config = load_config(REPO / "configs" / name, environ={})
    assert config.path == str(REPO / "configs" / name)
    assert "main" in config.spool.groups
    assert config.handlers["task"]
    assert config.handlers["legacy"]


def test_prod_config_matches_the_documented_defaults():
    config = load_config(REPO / "configs" / "prod.toml", environ={})
    defaults = parse_config({}, environ={})
    assert config.pool == defaults.pool
    assert config.retry == defaults.retry
    assert config.heartbeat == defaults.heartbeat
    assert config.ack == defaults.ack
    # prod.toml names its groups and takes the original agents' task commands; every other key is a default
    assert dataclasses.replace(config.spool, groups=defaults.spool.groups, inboxes=defaults.spool.inboxes) \
        == defaults.spool
    assert config.spool.inboxes == ("messages", "tasks")
    assert config.log == defaults.log
    assert config.http == defaults.http
    assert config.groups["group1"].allowed_types == ("task", "command", "heartbeat")


@pytest.mark.parametrize("table, key, problem", [
    ({"http": {"listen": "9464"}}, "[http] listen", 'must be "host:port"'),
    ({"http": {"listen": "127.0.0.1:70000"}}, "[http] listen", "the port must be a number from 0 to 65535"),
    ({"http": {"loop_timeout": 0}}, "[http] loop_timeout", "must be"),
    ({"log": {"format": "yaml"}}, "[log] format", "must be one of 'text', 'json'"),
])
def test_http_and_log_keys_are_checked(table, key, problem):
    with pytest.raises(ConfigError) as caught:
        parse_config(table, "c.toml", environ={})
    assert str(caught.value).startswith(f"c.toml: {key} ") and problem in str(caught.value)


def test_a_listen_address_takes_ipv6_brackets():
    from ipcpool.config import parse_listen

    assert parse_listen("[::1]:9464") == ("::1", 9464)
    assert parse_listen("0.0.0.0:0") == ("0.0.0.0", 0)
