"""gunicorn settings shared by every service, read from the environment.

Use it as ``gunicorn -c python:servicekit.gunicorn_conf 'user_management:create_app()'``;
``GUNICORN_BIND`` and ``GUNICORN_WORKERS`` say where and how many. Each service
folder also has a ``gunicorn.conf.py`` that only sets its default port and worker
count, so ``gunicorn -c user-management/gunicorn.conf.py ...`` needs no env. (Those
files sit beside the packages, not inside: importing a service package imports
prometheus_client, which must come after the metrics directory is set up below.)
"""

import gc
import os
import shutil
import tempfile

from servicekit.config import load_config

_settings = load_config({
    "GUNICORN_BIND": "127.0.0.1:8000",
    "GUNICORN_WORKERS": 2,
    "GUNICORN_THREADS": 1,
    "GUNICORN_TIMEOUT": 30,
    "LOG_LEVEL": "info",
})

bind = [_settings["GUNICORN_BIND"]]
workers = _settings["GUNICORN_WORKERS"]
# Sync workers: one request at a time per process, the simplest model to reason
# about; a worker waiting on notification is why user-management runs more of them.
# They also close every connection after its response, so no client can keep one
# alive. GUNICORN_THREADS above 1 switches to gthread workers, which do keep
# connections alive (what it takes to see keep-alive pin a caller to one pod).
worker_class = "sync"
threads = _settings["GUNICORN_THREADS"]
timeout = _settings["GUNICORN_TIMEOUT"]
# On SIGTERM (what Kubernetes and Docker send) workers finish their request first.
graceful_timeout = 20
# Import the app once in the master, then fork: faster start, shared memory pages.
preload_app = True
# The worker heartbeat file; /dev/shm is memory, and writable under a read-only root.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
loglevel = _settings["LOG_LEVEL"]
# gunicorn's control socket has one default path per user: several servers on one
# machine (a local cluster runs many) would fight over it, and nothing here uses it.
control_socket_disable = True
accesslog = "-"
errorlog = "-"
logger_class = "servicekit.logs.GunicornLogger"

# Per-worker metric files, summed by /metrics. Must be set before the app (and
# so prometheus_client) is imported, which preload_app does right after this file.
_own_metrics_dir = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _own_metrics_dir = tempfile.mkdtemp(prefix="canarylab-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _own_metrics_dir


def when_ready(server):
    """After the app is imported (preload), before the workers are forked."""
    # Everything imported so far (Flask, the X-Ray SDK and the botocore it pulls
    # in...) lives as long as the process. Freezing it takes it out of the garbage
    # collector's sweeps: profiled under load, full collections walking that heap
    # cost more CPU per request than the X-Ray segment itself. It also keeps the
    # forked workers from copying those pages (gc bookkeeping writes to them).
    gc.freeze()


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(_own_metrics_dir, ignore_errors=True)


def service_defaults(port: int, workers: int) -> dict:
    """The settings above with a service's own default port and worker count."""
    env = load_config({"GUNICORN_BIND": f"127.0.0.1:{port}", "GUNICORN_WORKERS": workers})
    return {"bind": [env["GUNICORN_BIND"]], "workers": env["GUNICORN_WORKERS"]}
