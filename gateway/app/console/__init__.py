"""The technician's serial console.

* ``protocol``: the pure line discipline (bytes in, echo and lines out).
* ``commands``: the ``Console`` (session, prompt, PIN entry, idle lock, dispatch) over an injected
  ``GatewayView``; ``table``: the command table as data; ``read_commands`` and ``write_commands``: the commands,
  which return ``Reply``/``Work`` values (``values``) and never do IO; ``text``: 80-column formatting.
* ``auth``: PIN hashing (``hash_pin``), unlock with backoff and lockout, idle re-lock, the audit trail.
* ``board``: the pure "last readings" board; ``settings``: pure config edits.
* ``view``: the real view over a running ``Agent``; ``serial_io``: the tty adapter (os/termios).
* ``serve``: ``serve_console`` for the agent and the demo; ``command``: ``edge-gateway console``.

Nothing is imported here, so importing a pure module does not pull in the adapters.
"""
