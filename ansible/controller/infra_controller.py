"""The warm Ansible controller of infra-service (issue 15).

A cold ``ansible-playbook`` spends most of its CPU importing Ansible and
loading its plugins. This program pays that once: it imports Ansible, loads
the plugins the shipped playbooks use, checks itself, and then forks one
child per run. Each child resets every piece of Ansible state that was
computed from the environment or the configuration at import time, takes
the run's environment, working directory and stdio, and runs the same entry
point as the ``ansible-playbook`` script. The controller itself never runs
a playbook and never changes its own state after it said ``ready``, so
nothing one run does can reach another.

The other side is the worker's ``src/ansible/controller.rs`` (with
``src/ansible/warm.rs``); the shared design is issue 15's. In short:

* stdin is one end of an ``AF_UNIX`` ``SOCK_STREAM`` socketpair, the private
  channel. A frame is a 4-byte big-endian length N (at most 4 MiB) and N
  bytes of UTF-8 JSON (one object). File descriptors travel as one
  ``SCM_RIGHTS`` message attached to the frame's first byte.
* controller -> worker, once: ``{"op": "ready", "pid", "ansible_version",
  "python", "preloaded"}``, or ``{"op": "failed", "error"}`` and exit 1.
* worker -> controller: ``{"op": "run", "id", "argv", "env", "cwd"}`` with
  exactly 3 fds ``[stdout_w, stderr_w, status_w]``; no reply frame.
  ``{"op": "ping", "seq"}`` -> ``{"op": "pong", "seq", "rss_kb"}``.
* EOF on the channel: exit at once (running children go on).
* The status pipe, written by the run child: ``pid <pid>`` first, ``exit
  <code>`` last; the controller writes ``error <message>`` only when fork()
  failed. A child killed by a signal writes no ``exit`` line.

Secrets arrive in a run's ``env``: they are never logged, and the
controller drops its references right after the fork.

The state reset (``_reset_*`` below) is specific to the Ansible versions in
``SUPPORTED``: it was derived by auditing, for ansible-core 2.19, every
setting, constant and environment variable read while the preloaded modules
are imported (statically: module- and class-level ``C.*`` reads; and
dynamically: instrumented ``ConfigManager`` and ``os.environ`` reads).
Supporting another version means redoing that audit.
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import json
import os
import signal
import socket
import struct
import sys
import traceback

# Ansible versions (major, minor) whose import-time state the reset covers.
SUPPORTED = ((2, 19),)

# The largest frame either side may send (the design's limit).
MAX_FRAME = 4 * 1024 * 1024
HEADER = struct.Struct(">I")
# A run frame carries exactly these fds, in this order.
RUN_FDS = 3

# Plugins the shipped playbooks cannot run without: a failed import of any of
# them fails the self-check (the worker then stays cold). Python module names.
REQUIRED_PLUGINS = (
    "ansible.plugins.connection.ssh",
    "ansible.plugins.connection.local",
    "ansible.plugins.shell.sh",
    "ansible.plugins.become.sudo",
    "ansible.plugins.strategy.linear",
    "ansible.plugins.callback.default",
    "ansible.plugins.cache.memory",
    "ansible.plugins.vars.host_group_vars",
    "ansible.plugins.inventory.host_list",
    "ansible.plugins.inventory.ini",
    "ansible.plugins.inventory.yaml",
    "ansible.plugins.inventory.auto",
    "ansible.plugins.lookup.env",
    "ansible.plugins.lookup.password",
    "ansible.plugins.filter.core",
    "ansible.plugins.filter.mathstuff",
    "ansible.plugins.test.core",
    # Action plugins of the modules the roles use (the rest go through
    # "normal"). A run loads them again under their collection name, but
    # what they import stays loaded.
    "ansible.plugins.action.normal",
    "ansible.plugins.action.command",
    "ansible.plugins.action.shell",
    "ansible.plugins.action.copy",
    "ansible.plugins.action.template",
    "ansible.plugins.action.debug",
    "ansible.plugins.action.set_fact",
    "ansible.plugins.action.set_stats",
    "ansible.plugins.action.assert",
    "ansible.plugins.action.fail",
    "ansible.plugins.action.uri",
    "ansible.plugins.action.service",
    "ansible.plugins.action.package",
    "ansible.plugins.action.include_vars",
)

# Loaded too when present: what a run loads anyway (the callback and
# connection loaders import every plugin of their type), and what it may use.
OPTIONAL_PLUGINS = (
    "ansible.plugins.become.su",
    "ansible.plugins.callback.minimal",
    "ansible.plugins.callback.oneline",
    "ansible.plugins.callback.tree",
    "ansible.plugins.callback.junit",
    "ansible.plugins.connection.paramiko_ssh",
    "ansible.plugins.connection.psrp",
    "ansible.plugins.connection.winrm",
    "ansible.plugins.shell.powershell",
    "ansible.plugins.shell.cmd",
    "ansible.plugins.strategy.free",
    "ansible.plugins.inventory.script",
    "ansible.plugins.inventory.toml",
    "ansible.plugins.inventory.advanced_host_list",
    "ansible.plugins.inventory.constructed",
    "ansible.plugins.lookup.config",
    "ansible.plugins.lookup.file",
    "ansible.plugins.lookup.pipe",
    "ansible.plugins.filter.urls",
    "ansible.plugins.filter.urlsplit",
    "ansible.plugins.filter.encryption",
    "ansible.plugins.test.files",
    "ansible.plugins.test.mathstuff",
    "ansible.plugins.test.uri",
    "ansible.plugins.action.gather_facts",
    "ansible.plugins.action.wait_for_connection",
    "ansible.plugins.action.fetch",
)

# The engine beyond what ansible.cli.playbook imports: the task executor,
# the worker processes, includes and handlers.
ENGINE_MODULES = (
    "ansible.cli.playbook",
    "ansible.executor.process.worker",
    "ansible.executor.task_executor",
    "ansible.playbook.handler",
    "ansible.playbook.handler_task_include",
    "ansible.playbook.included_file",
    "ansible.playbook.role_include",
    "ansible.playbook.task_include",
    "ansible.playbook.role.include",
    "ansible.utils.hashing",
    "multiprocessing.popen_fork",
    "multiprocessing.synchronize",
    "multiprocessing.queues",
)

# Modules the shipped roles use: their source must be there (they run on the
# target, so the controller does not import them).
REQUIRED_MODULES = (
    "command", "set_fact", "file", "assert", "systemd_service", "copy", "slurp",
    "template", "lineinfile", "apt", "stat", "set_stats", "debug", "getent",
    "fail", "user", "group", "wait_for", "uri", "tempfile", "git", "get_url",
    "include_tasks", "include_role",
)

# Each plugin loader and the setting naming its configured paths (the loaders
# are created at import time from these).
LOADER_PATH_SETTINGS = {
    "fragment_loader": "DOC_FRAGMENT_PLUGIN_PATH",
    "action_loader": "DEFAULT_ACTION_PLUGIN_PATH",
    "cache_loader": "DEFAULT_CACHE_PLUGIN_PATH",
    "callback_loader": "DEFAULT_CALLBACK_PLUGIN_PATH",
    "connection_loader": "DEFAULT_CONNECTION_PLUGIN_PATH",
    "shell_loader": None,
    "module_loader": "DEFAULT_MODULE_PATH",
    "module_utils_loader": "DEFAULT_MODULE_UTILS_PATH",
    "ps_module_utils_loader": "DEFAULT_MODULE_UTILS_PATH",
    "lookup_loader": "DEFAULT_LOOKUP_PLUGIN_PATH",
    "filter_loader": "DEFAULT_FILTER_PLUGIN_PATH",
    "test_loader": "DEFAULT_TEST_PLUGIN_PATH",
    "strategy_loader": "DEFAULT_STRATEGY_PLUGIN_PATH",
    "terminal_loader": "DEFAULT_TERMINAL_PLUGIN_PATH",
    "vars_loader": "DEFAULT_VARS_PLUGIN_PATH",
    "cliconf_loader": "DEFAULT_CLICONF_PLUGIN_PATH",
    "netconf_loader": "DEFAULT_NETCONF_PLUGIN_PATH",
    "inventory_loader": "DEFAULT_INVENTORY_PLUGIN_PATH",
    "httpapi_loader": "DEFAULT_HTTPAPI_PLUGIN_PATH",
    "become_loader": "BECOME_PLUGIN_PATH",
}

# Playbook keywords whose defaults are settings, read when the class is
# created: (module, class, attribute, setting).
FIELD_DEFAULTS = (
    ("ansible.playbook.base", "Base", "no_log", "DEFAULT_NO_LOG"),
    ("ansible.playbook.base", "Base", "any_errors_fatal", "ANY_ERRORS_FATAL"),
    ("ansible.playbook.base", "Base", "timeout", "TASK_TIMEOUT"),
    ("ansible.playbook.play", "Play", "strategy", "DEFAULT_STRATEGY"),
    ("ansible.playbook.play_context", "PlayContext", "module_compression", "DEFAULT_MODULE_COMPRESSION"),
    ("ansible.playbook.play_context", "PlayContext", "executable", "DEFAULT_EXECUTABLE"),
    ("ansible.playbook.play_context", "PlayContext", "timeout", "DEFAULT_TIMEOUT"),
    ("ansible.playbook.play_context", "PlayContext", "private_key_file", "DEFAULT_PRIVATE_KEY_FILE"),
    ("ansible.playbook.play_context", "PlayContext", "pipelining", "ANSIBLE_PIPELINING"),
    ("ansible.playbook.play_context", "PlayContext", "become_exe", "DEFAULT_BECOME_EXE"),
    ("ansible.playbook.play_context", "PlayContext", "become_flags", "DEFAULT_BECOME_FLAGS"),
    ("ansible.playbook.task", "Task", "poll", "DEFAULT_POLL_INTERVAL"),
)


class SelfCheckFailed(Exception):
    """The controller cannot serve warm runs (the worker stays cold)."""


class ChannelBroken(Exception):
    """The channel carried something that is not a frame."""


def log(message):
    """One line for the worker's log (stderr, logged at warn). Never a value
    of a run's environment."""
    try:
        os.write(2, f"infra_controller[{os.getpid()}]: {message}\n".encode("utf-8", "replace"))
    except OSError:
        pass


# --- the channel --------------------------------------------------------------


def send_frame(channel, obj):
    """Send one frame (header and body in one sendall)."""
    body = json.dumps(obj, separators=(",", ":")).encode("utf-8")
    channel.sendall(HEADER.pack(len(body)) + body)


def _fds_of(ancdata):
    """The fds of the SCM_RIGHTS messages in ``ancdata``."""
    fds = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds.extend(struct.unpack(f"{usable // 4}i", data[:usable]))
    return fds


def _close_all(fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _recv_exactly(channel, size, fds):
    """Read ``size`` bytes into a bytearray, collecting the fds that arrive
    with them into ``fds``; None on EOF before the first byte."""
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    room = socket.CMSG_SPACE(RUN_FDS * 4 * 4)
    while got < size:
        nbytes, ancdata, flags, _ = channel.recvmsg_into(
            [view[got:]], room, socket.MSG_CMSG_CLOEXEC
        )
        fds.extend(_fds_of(ancdata))
        if flags & socket.MSG_CTRUNC:
            raise ChannelBroken("control message truncated (too many fds)")
        if nbytes == 0:
            if got == 0:
                return None
            raise ChannelBroken("EOF inside a frame")
        got += nbytes
    return buf


def recv_frame(channel):
    """The next frame as (object, fds), or None on EOF. The fds are those
    attached to the frame's first byte (its header)."""
    fds = []
    try:
        header = _recv_exactly(channel, HEADER.size, fds)
        if header is None:
            return None
        (size,) = HEADER.unpack(header)
        if size > MAX_FRAME:
            raise ChannelBroken(f"frame of {size} bytes")
        body_fds = []
        body = _recv_exactly(channel, size, body_fds) if size else bytearray()
        if body is None:
            raise ChannelBroken("EOF inside a frame")
        if body_fds:
            _close_all(body_fds)
            raise ChannelBroken("fds attached inside a frame")
        try:
            obj = json.loads(body.decode("utf-8"))
        finally:
            # The body may hold a run's secrets: wipe the only mutable copy.
            body[:] = bytes(len(body))
        if not isinstance(obj, dict):
            raise ChannelBroken("a frame that is not a JSON object")
        return obj, fds
    except (ChannelBroken, ValueError):
        _close_all(fds)
        raise


# --- self-check and preload ---------------------------------------------------


def _import_all(names, required):
    """Import ``names``; the count imported. A required one that fails fails
    the self-check."""
    count = 0
    for name in names:
        try:
            importlib.import_module(name)
            count += 1
        except Exception as error:  # noqa: BLE001 - any failure to load counts
            if required:
                raise SelfCheckFailed(f"cannot load {name}: {error}") from error
    return count


def _check_modules():
    """The modules the shipped roles use exist (their source ships to the
    target; only its presence is checked here)."""
    missing = [
        name for name in REQUIRED_MODULES
        if importlib.util.find_spec(f"ansible.modules.{name}") is None
    ]
    if missing:
        raise SelfCheckFailed("missing modules: " + ", ".join(missing))


def _check_reset_table():
    """The reset's tables still match this Ansible: each keyword default named
    in FIELD_DEFAULTS currently is its setting's value, each loader exists."""
    import ansible.constants as C
    from ansible.plugins import loader

    for module, cls, attr, setting in FIELD_DEFAULTS:
        field = vars(getattr(sys.modules[module], cls)).get(attr)
        if field is None or field.default != getattr(C, setting):
            raise SelfCheckFailed(f"{cls}.{attr} is not the keyword the reset knows")
    for name in LOADER_PATH_SETTINGS:
        if not isinstance(getattr(loader, name, None), loader.PluginLoader):
            raise SelfCheckFailed(f"no plugin loader {name}")


def self_check_and_preload():
    """Import Ansible and preload; the ``ready`` frame's facts."""
    try:
        import ansible.release
    except ImportError as error:
        raise SelfCheckFailed(f"cannot import ansible: {error}") from error
    version = ansible.release.__version__
    major_minor = tuple(int(part) for part in version.split(".")[:2])
    if major_minor not in SUPPORTED:
        raise SelfCheckFailed(f"ansible-core {version} is not supported (the state reset knows 2.19)")
    _import_all(ENGINE_MODULES, required=True)
    preloaded = _import_all(REQUIRED_PLUGINS, required=True)
    preloaded += _import_all(OPTIONAL_PLUGINS, required=False)
    _check_modules()
    _check_reset_table()
    _remember_import_state()
    return {
        "ansible_version": version,
        "python": ".".join(str(part) for part in sys.version_info[:3]),
        "preloaded": preloaded,
    }


# What the controller computed at import time and a child may reuse when its
# own settings give the same inputs.
_IMPORT_STATE = {}


def _remember_import_state():
    import ansible.constants as C
    from ansible.plugins import loader

    # The parsed base.yml (settings' definitions): the same file for every
    # run, so a child reuses the parse instead of reading it again.
    _IMPORT_STATE["base_defs"] = C.config._base_defs
    _IMPORT_STATE["keep_remote_files"] = C.DEFAULT_KEEP_REMOTE_FILES
    _remember_builtin_routing()
    _remember_plugin_config_defs(C, loader)
    # Legacy plugin modules in sys.modules: a run that resolves one of these
    # names to another file must load that file, as a cold run would.
    _IMPORT_STATE["preloaded_legacy"] = {
        name: getattr(module, "__file__", None)
        for name, module in sys.modules.items()
        if name.startswith("ansible.plugins.") and name.count(".") == 3
    }


def _remember_builtin_routing():
    """ansible.builtin's routing (a large YAML file every run parses when the
    collection loader first loads ansible.builtin), parsed once here."""
    import ansible
    from ansible.utils.collection_loader import _collection_meta

    path = os.path.join(os.path.dirname(ansible.__file__), "config", "ansible_builtin_runtime.yml")
    with open(path, "rb") as source:
        raw = source.read()
    _IMPORT_STATE["builtin_routing"] = (raw, _collection_meta._meta_yml_to_dict(raw, ("ansible.builtin", "runtime.yml")))


def _remember_plugin_config_defs(C, loader):
    """The option definitions each preloaded configurable plugin registers
    when a run loads it (parsing its DOCUMENTATION and doc fragments: most of
    a warm run's CPU otherwise), computed with the loaders' own code. The
    loaders and the configuration are then left as they were."""
    cache = {}
    for name, module in list(sys.modules.items()):
        parts = name.split(".")
        if len(parts) != 4 or parts[:2] != ["ansible", "plugins"]:
            continue
        plugin_loader = getattr(loader, f"{parts[2]}_loader", None)
        path = getattr(module, "__file__", None)
        if not isinstance(plugin_loader, loader.PluginLoader) or not path or not plugin_loader.class_name:
            continue
        type_name = loader.get_plugin_class(plugin_loader.class_name)
        if type_name not in C.CONFIGURABLE_PLUGINS:
            continue
        plugin_loader._load_config_defs(parts[3], module, path)
        defs = C.config._plugins.get(type_name, {}).pop(parts[3], None)
        if defs is not None:
            cache[(type_name, path)] = (getattr(module, "DOCUMENTATION", ""), defs)
    C.config._plugins.clear()
    _IMPORT_STATE["plugin_config_defs"] = cache
    _IMPORT_STATE["fragment_paths"] = list(loader.fragment_loader.config)
    # Resolving doc fragments filled loader caches: empty them again.
    for name in LOADER_PATH_SETTINGS:
        getattr(loader, name)._clear_caches()


# --- the run child --------------------------------------------------------------


def _python_exit_code(code):
    """The process exit status Python gives ``sys.exit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        sys.stderr.write(f"{code}\n")
    except Exception:  # noqa: BLE001 - as Python's own handling: best effort
        pass
    return 1


def _take_stdio(out_fd, err_fd, status_fd, channel):
    """fds 0/1/2 = /dev/null, the run's stdout, its stderr; every other fd but
    the status pipe closed. Returns the status fd."""
    # Out of 0..2 first, so the dup2s below cannot overwrite one another.
    import fcntl

    out_fd, err_fd, status_fd = (
        fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in (out_fd, err_fd, status_fd)
    )
    channel.detach()  # its fd is closed below; the object must not close it again
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    keep = {0, 1, 2, status_fd}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
    return status_fd


def _new_std_streams():
    """sys.stdin/stdout/stderr on fds 0/1/2 as PYTHONUNBUFFERED=1 gives a cold
    run: stdout/stderr unbuffered and write-through."""
    import io

    def text(fd, mode):
        buffering = -1 if mode == "r" else 0
        raw = io.open(fd, mode + "b", buffering=buffering, closefd=False)
        encoding, errors = _STDIO_CODECS[fd]
        return io.TextIOWrapper(
            raw,
            encoding=encoding,
            errors=errors,
            line_buffering=False,
            write_through=mode == "w",
        )

    sys.stdin = sys.__stdin__ = text(0, "r")
    sys.stdout = sys.__stdout__ = text(1, "w")
    sys.stderr = sys.__stderr__ = text(2, "w")


# The encoding and error handler Python gave fds 0/1/2 at start (before
# Ansible reconfigured them): a run's new streams get the same.
_STDIO_CODECS = {}


def _remember_stdio_codecs():
    for fd, stream in ((0, sys.stdin), (1, sys.stdout), (2, sys.stderr)):
        _STDIO_CODECS[fd] = (stream.encoding, stream.errors)


def _default_signals():
    """Signal dispositions as a fresh Python has them."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)


def _check_blocking_io():
    """ansible/cli/__init__.py's import-time check, on the run's stdio."""
    from ansible.cli import check_blocking_io

    check_blocking_io()


def _run_playbook(argv):
    """The ``ansible-playbook`` script's body; the exit status."""
    import re

    from ansible.cli.playbook import main

    sys.argv = list(argv)
    sys.argv[0] = re.sub(r"(-script\.pyw|\.exe)?$", "", sys.argv[0])
    try:
        code = main()
    except SystemExit as error:
        return _python_exit_code(error.code)
    return _python_exit_code(code)


def _finish(status_fd, code):
    """Interpreter shutdown as a cold run has it, the exit line, and exit."""
    import atexit
    import threading

    try:
        threading._shutdown()  # join non-daemon threads, as Py_FinalizeEx does
    except Exception:  # noqa: BLE001 - shutdown is best effort
        pass
    try:
        atexit._run_exitfuncs()
    except Exception:  # noqa: BLE001
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    try:
        os.write(status_fd, f"exit {code}\n".encode("ascii"))
    except OSError:
        pass
    os._exit(code)


def run_child(channel, request, fds):
    """The forked run: never returns."""
    code = 1
    status_fd = fds[2]
    try:
        os.setsid()
        os.write(status_fd, f"pid {os.getpid()}\n".encode("ascii"))
        status_fd = _take_stdio(fds[0], fds[1], status_fd, channel)
        _default_signals()
        _new_std_streams()
        _check_blocking_io()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        argv = request["argv"]
        del request
        reset_ansible_state()
        code = _run_playbook(argv)
    except SystemExit as error:
        code = _python_exit_code(error.code)
    except KeyboardInterrupt:
        # An uncaught ^C: Python prints it and dies of SIGINT (no exit line).
        traceback.print_exc()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:  # noqa: BLE001 - as an uncaught exception: traceback, 1
        traceback.print_exc()
        code = 1
    _finish(status_fd, code)


# --- the reset of import-time state (in the child, after its env is set) ----


def reset_ansible_state():
    """Make every piece of Ansible state that read the environment or the
    configuration at import time read the run's, in dependency order."""
    import locale

    locale.setlocale(locale.LC_ALL, "")  # cli/__init__ did this at import
    _reset_config()
    _reset_display()
    _reset_loaders()
    _reset_derived_settings()
    _reset_per_process_ids()


def _reset_config():
    """A new configuration (ansible.cfg found from the run's env and cwd) and
    every constant computed from it, in the same ConfigManager object: the
    modules that imported ``config`` by name see the new one."""
    import ansible.constants as C
    from ansible.config.manager import ConfigManager

    ConfigManager.WARNINGS.clear()
    ConfigManager.DEPRECATED.clear()
    config = C.config
    base_defs = _IMPORT_STATE["base_defs"]
    # A fresh object's state: __init__ alone would wrap the controller's
    # functools.cache of ini values (stale if ansible.cfg changed) again.
    config.__dict__.clear()
    config._read_config_yaml_file = lambda _path: base_defs
    try:
        ConfigManager.__init__(config)
    finally:
        del config._read_config_yaml_file
    # As ansible/constants.py's last loop.
    for setting in config.get_configuration_definitions():
        C.set_constant(setting, config.get_config_value(setting, variables=vars(C)))


def _reset_display():
    """The Display singleton, the log file and colours, as at import."""
    import getpass
    import logging

    import ansible.constants as C
    from ansible.utils import color, display as display_module

    # Display.__init__ reads settings and wraps the (new) sys.stdout/stderr.
    display_module.Display.__init__(display_module.Display())
    try:
        display_module.FilterUserInjector.username = getpass.getuser()
    except KeyError:
        display_module.FilterUserInjector.username = "uid=%s" % os.getuid()
    _reset_log_file(display_module, logging, C)
    display_module.color_to_log_level = {
        C.COLOR_DEBUG: logging.DEBUG,
        C.COLOR_VERBOSE: logging.INFO,
        C.COLOR_OK: logging.INFO,
        C.COLOR_INCLUDED: logging.INFO,
        C.COLOR_CHANGED: logging.INFO,
        C.COLOR_SKIP: logging.WARNING,
        C.COLOR_DEPRECATE: logging.WARNING,
        C.COLOR_WARN: logging.WARNING,
        C.COLOR_UNREACHABLE: logging.ERROR,
        C.COLOR_ERROR: logging.ERROR,
    }
    color.ANSIBLE_COLOR = _ansible_color(C)


def _reset_log_file(display_module, logging, C):
    """ansible/utils/display.py's import-time log setup, for the run's
    DEFAULT_LOG_PATH (the controller's own handlers are dropped)."""
    for handler in list(logging.root.handlers):
        logging.root.removeHandler(handler)
    display_module.logger = None
    path = C.DEFAULT_LOG_PATH
    if not path:
        return
    if path and (os.path.exists(path) and os.access(path, os.W_OK)) or os.access(os.path.dirname(path), os.W_OK):
        if not os.path.isdir(path):
            logging.basicConfig(
                filename=path,
                level=logging.INFO,
                format="%(asctime)s p=%(process)d u=%(user)s n=%(name)s %(levelname)s| %(message)s",
            )
            display_module.logger = logging.getLogger("ansible")
            for handler in logging.root.handlers:
                handler.addFilter(display_module.FilterBlackList(getattr(C, "DEFAULT_LOG_FILTER", [])))
                handler.addFilter(display_module.FilterUserInjector())
        else:
            print(f"[WARNING]: DEFAULT_LOG_PATH can not be a directory '{path}', aborting", file=sys.stderr)
    else:
        print(f"[WARNING]: log file at '{path}' is not writeable and we cannot create it, aborting\n", file=sys.stderr)


def _ansible_color(C):
    """ansible/utils/color.py's ANSIBLE_COLOR for the run's stdout."""
    if C.ANSIBLE_FORCE_COLOR:
        return True
    if C.ANSIBLE_NOCOLOR:
        return False
    if not hasattr(sys.stdout, "isatty") or not sys.stdout.isatty():
        return False
    try:
        import curses

        curses.setupterm()
        return curses.tigetnum("colors") >= 0
    except ImportError:
        return True
    except Exception:  # noqa: BLE001 - curses.error: no usable terminal
        return False


def _reset_loaders():
    """Each plugin loader with the run's configured paths and empty caches;
    builtin plugins preloaded under a legacy name are reused only when the
    run resolves that name to the same file."""
    import ansible.constants as C
    from ansible.plugins import loader

    for name, setting in LOADER_PATH_SETTINGS.items():
        plugin_loader = getattr(loader, name)
        if setting is not None:
            paths = getattr(C, setting)
            if paths and not isinstance(paths, list):
                paths = [paths]
            plugin_loader.config = paths or []
        plugin_loader._extra_dirs = []
        plugin_loader._clear_caches()
        plugin_loader._searched_paths = set()
    _guard_preloaded_plugins(loader)
    _serve_remembered_config_defs(loader)
    _serve_remembered_routing()


def _serve_remembered_config_defs(loader):
    """A plugin's option definitions from the controller's parse when the
    run loads the same file with the same doc fragment search path (else the
    loader parses, as cold). Each is served once: a second load parses again,
    giving a new object as a cold run's would."""
    import ansible.constants as C

    remembered = dict(_IMPORT_STATE["plugin_config_defs"])
    fragment_paths = _IMPORT_STATE["fragment_paths"]
    original = loader.PluginLoader._load_config_defs

    def load_config_defs(self, name, module, path):
        if self.class_name:
            type_name = loader.get_plugin_class(self.class_name)
            entry = remembered.get((type_name, path))
            if (
                entry is not None
                and entry[0] == getattr(module, "DOCUMENTATION", "")
                and loader.fragment_loader.config == fragment_paths
                and not loader.fragment_loader._extra_dirs
                and not C.config.has_configuration_definition(type_name, name)
            ):
                del remembered[(type_name, path)]
                C.config.initialize_plugin_configuration_definitions(type_name, name, entry[1])
                loader.display.debug("Loaded config def from plugin (%s/%s)" % (type_name, name))
                return None
        return original(self, name, module, path)

    loader.PluginLoader._load_config_defs = load_config_defs


def _serve_remembered_routing():
    """ansible.builtin's routing from the controller's parse, once, when the
    run's collection loader reads the same bytes."""
    from ansible.utils.collection_loader import _collection_finder

    raw, parsed = _IMPORT_STATE["builtin_routing"]
    remembered = [parsed]
    original = _collection_finder._meta_yml_to_dict

    def meta_yml_to_dict(yaml_string_data, content_id):
        if remembered and content_id == ("ansible.builtin", "runtime.yml") and yaml_string_data == raw:
            return remembered.pop()
        return original(yaml_string_data, content_id)

    _collection_finder._meta_yml_to_dict = meta_yml_to_dict


def _guard_preloaded_plugins(loader):
    """A cold run finds a legacy plugin name in sys.modules only once it
    loaded it. Here the builtin ones are there from the start: keep serving
    one only for its own file, else drop it so the run's file is loaded."""
    preloaded = dict(_IMPORT_STATE["preloaded_legacy"])
    original = loader.PluginLoader._load_module_source

    def load_module_source(self, *, python_module_name, path):
        if python_module_name in preloaded:
            builtin_path = preloaded.pop(python_module_name)
            if builtin_path != path:
                sys.modules.pop(python_module_name, None)
        return original(self, python_module_name=python_module_name, path=path)

    loader.PluginLoader._load_module_source = load_module_source


def _reset_derived_settings():
    """Module and class attributes computed from settings at import."""
    import re

    import ansible.constants as C
    from ansible._internal._errors._handler import ErrorHandler
    from ansible._internal._templating import _jinja_common
    from ansible.cli import CLI
    from ansible.executor import module_common
    from ansible.executor.task_queue_manager import TaskQueueManager
    from ansible.inventory import manager as inventory_manager
    from ansible.module_utils.common.text.converters import to_bytes
    from ansible.plugins.callback import CallbackBase

    for module, cls, attr, setting in FIELD_DEFAULTS:
        vars(getattr(sys.modules[module], cls))[attr].default = getattr(C, setting)

    template_config = _jinja_common._TemplateConfig
    template_config.allow_embedded_templates = C.config.get_config_value("ALLOW_EMBEDDED_TEMPLATES")
    template_config.allow_broken_conditionals = C.config.get_config_value("ALLOW_BROKEN_CONDITIONALS")
    template_config.jinja_extensions = C.config.get_config_value("DEFAULT_JINJA2_EXTENSIONS")
    template_config.sandbox_mode = _jinja_common._SandboxMode.__members__[
        C.config.get_config_value("_TEMPLAR_SANDBOX_MODE").upper()
    ]
    template_config.unknown_type_encountered_handler = ErrorHandler.from_config("_TEMPLAR_UNKNOWN_TYPE_ENCOUNTERED")
    template_config.unknown_type_conversion_handler = ErrorHandler.from_config("_TEMPLAR_UNKNOWN_TYPE_CONVERSION")
    template_config.untrusted_template_handler = ErrorHandler.from_config("_TEMPLAR_UNTRUSTED_TEMPLATE_BEHAVIOR")
    TaskQueueManager._callback_dispatch_error_handler = ErrorHandler.from_config("_CALLBACK_DISPATCH_ERROR_BEHAVIOR")

    CLI.PAGER = C.config.get_config_value("PAGER")
    CallbackBase._print_task_path.__defaults__ = (C.COLOR_DEBUG,)

    patterns = [to_bytes(x) for x in C.INVENTORY_IGNORE_PATTERNS]
    exts = [b"%s$" % to_bytes(re.escape(x)) for x in C.INVENTORY_IGNORE_EXTS]
    inventory_manager.IGNORED_PATTERNS = patterns
    inventory_manager.IGNORED_EXTS = exts
    inventory_manager.IGNORED = re.compile(b"|".join(inventory_manager.IGNORED_ALWAYS + patterns + exts))

    if C.DEFAULT_KEEP_REMOTE_FILES != _IMPORT_STATE["keep_remote_files"]:
        module_common._ANSIBALLZ_CODE = module_common._read_ansiballz_code()


def _reset_per_process_ids():
    """What a fresh process draws at import: task UUIDs' random part."""
    import secrets

    from ansible.utils import vars as ansible_vars

    ansible_vars.cur_id = 0
    ansible_vars.random_int = ("%08x" % secrets.randbelow(ansible_vars._MAXSIZE))[:8]


# --- the loop -------------------------------------------------------------------


def _rss_kb():
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _reap(_signum=None, _frame=None):
    """Reap every exited child (their exit codes go through status pipes)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        except InterruptedError:
            continue
        if pid == 0:
            return


def _valid_run(request, fds):
    """Why a run frame cannot be served, or None."""
    if len(fds) != RUN_FDS:
        return f"{len(fds)} fds instead of {RUN_FDS}"
    argv, env, cwd = request.get("argv"), request.get("env"), request.get("cwd")
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        return "argv is not a non-empty list of strings"
    if not (isinstance(env, dict) and all(isinstance(v, str) for v in env.values())):
        return "env is not an object of strings"
    if not isinstance(cwd, str) or not os.path.isabs(cwd):
        return "cwd is not an absolute path"
    return None


def start_run(channel, request, fds):
    """Fork the run's child; the controller keeps no fd and no reference."""
    run_id = str(request.get("id", "?"))[:80]
    problem = _valid_run(request, fds)
    if problem is not None:
        log(f"run {run_id} refused: {problem}")
        if len(fds) == RUN_FDS:
            _write_error(fds[2], f"bad run frame: {problem}")
        _close_all(fds)
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        pid = os.fork()
    except OSError as error:
        _write_error(fds[2], f"fork failed: {error.strerror}")
        _close_all(fds)
        return
    if pid == 0:
        run_child(channel, request, fds)  # never returns
    _close_all(fds)


def _write_error(status_fd, message):
    try:
        os.write(status_fd, f"error {message}\n".encode("ascii", "replace"))
    except OSError:
        pass


def serve(channel):
    """Answer frames until EOF."""
    signal.signal(signal.SIGCHLD, _reap)
    while True:
        frame = recv_frame(channel)
        if frame is None:
            return
        request, fds = frame
        del frame
        op = request.get("op")
        if op == "run":
            start_run(channel, request, fds)
        elif op == "ping":
            _close_all(fds)
            send_frame(channel, {"op": "pong", "seq": request.get("seq"), "rss_kb": _rss_kb()})
        else:
            _close_all(fds)
            log(f"unknown frame op {str(op)[:40]!r} ignored")
        # The run's env (its secrets) must not outlive the fork here.
        del request, fds
        _reap()


def main():
    _remember_stdio_codecs()
    channel = socket.socket(fileno=0)
    if channel.family != socket.AF_UNIX or channel.type != socket.SOCK_STREAM:
        log("stdin is not a unix stream socket")
        return 1
    try:
        facts = self_check_and_preload()
    except SelfCheckFailed as error:
        log(f"self-check failed: {error}")
        send_frame(channel, {"op": "failed", "error": str(error)})
        return 1
    except Exception as error:  # noqa: BLE001 - any import failure is a failed check
        log("self-check failed: " + "".join(traceback.format_exception_only(type(error), error)).strip())
        send_frame(channel, {"op": "failed", "error": f"{type(error).__name__}: {error}"})
        return 1
    send_frame(channel, {"op": "ready", "pid": os.getpid(), **facts})
    try:
        serve(channel)
    except ChannelBroken as error:
        log(f"channel broken: {error}")
        return 1
    except (ConnectionResetError, BrokenPipeError):
        return 0
    return 0


if __name__ == "__main__":
    try:
        status = main()
    except OSError as error:
        if error.errno not in (errno.EPIPE, errno.ECONNRESET):
            raise
        status = 0
    # At once, without tearing down the heap of a preloaded Ansible (the
    # worker may be waiting to restart it); nothing is buffered.
    sys.stderr.flush()
    os._exit(status)
