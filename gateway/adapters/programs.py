"""Running a site's own program for an action (``[[actions]]`` with ``program = [...]``): an argv list, no shell,
with the event in its environment, a timeout, a bound on how many run at once, and its output in the log.

``ProgramRunner.start(argv, env, timeout, name)`` returns at once: the run waits for a free slot (at most
``max_running`` at a time, at most ``max_waiting`` queued; beyond that the run is dropped and counted). Its stdout
and stderr (merged) are logged line by line at INFO under ``gateway.adapters.programs`` (at most ``MAX_OUTPUT``
bytes per run). A run past its timeout is killed (SIGKILL). Counters, per action: ``runs``, ``ok``, ``error.exit``
(a non-zero exit status; the last one in ``last_exit``), ``error.timeout``, ``error.spawn`` (not found, not
executable), ``dropped_busy``.
"""

import asyncio
import collections
import logging
import os

log = logging.getLogger(__name__)

MAX_OUTPUT = 4096
#: what a program inherits of the agent's environment; everything else it gets is EDGE_*
INHERIT = ("PATH", "LANG", "LC_ALL", "TZ")


class ProgramRunner:
    def __init__(self, max_running=2, max_waiting=16):
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.counters = collections.Counter()
        self.last_exit = {}
        self.recent = collections.deque(maxlen=16)  # (name, status, first output line) of finished runs
        self._slots = None
        self._tasks = set()

    def start(self, argv, env, timeout, name):
        """Queue one run of ``argv`` (a tuple, the program first) with ``env`` added to a minimal environment."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_running)
        if len(self._tasks) >= self.max_running + self.max_waiting:
            self.counters["%s.dropped_busy" % name] += 1
            log.error("program for action %s: %d runs under way or waiting; this one is dropped", name,
                      len(self._tasks))
            return None
        task = asyncio.get_running_loop().create_task(self._run(argv, env, timeout, name), name="program:" + name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self, argv, env, timeout, name):
        async with self._slots:
            self.counters["%s.runs" % name] += 1
            full = {k: os.environ[k] for k in INHERIT if k in os.environ}
            full.update(env)
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT, env=full, start_new_session=True)
            except OSError as exc:
                self.counters["%s.error.spawn" % name] += 1
                log.error("program for action %s: cannot start %s: %s", name, argv[0], exc.strerror or exc)
                self.recent.append((name, "spawn", str(exc)))
                return None
            output = bytearray()
            status = None
            try:
                async with asyncio.timeout(timeout):
                    while True:
                        chunk = await proc.stdout.read(1024)
                        if not chunk:
                            break
                        if len(output) < MAX_OUTPUT:
                            output += chunk[:MAX_OUTPUT - len(output)]
                    status = await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
                self.counters["%s.error.timeout" % name] += 1
                log.error("program for action %s: %s killed after %.1f s", name, argv[0], timeout)
            finally:
                if proc.returncode is None:  # cancelled while it ran (the agent stops)
                    proc.kill()
                    await proc.wait()
            text = output.decode("utf-8", "replace")
            for line in text.splitlines():
                log.info("program %s: %s", name, line)
            if status is None:
                self.recent.append((name, "timeout", text.split("\n", 1)[0]))
                return None
            self.last_exit[name] = status
            if status == 0:
                self.counters["%s.ok" % name] += 1
            else:
                self.counters["%s.error.exit" % name] += 1
                log.error("program for action %s: %s exited with status %d", name, argv[0], status)
            self.recent.append((name, status, text.split("\n", 1)[0]))
            return status

    async def close(self, timeout=5.0):
        """Wait for the runs under way (each ends by its own timeout), then cancel what is left."""
        if self._tasks:
            done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
