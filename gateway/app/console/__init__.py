"""The technician's serial console (GitHub issue 7).

* ``protocol``: the pure line discipline (bytes in, echo and lines out).
* ``commands``: pure parsing, dispatch and 80-column output against an injected ``GatewayView``.
* ``auth``: PIN hashing (``hash_pin``), unlock with backoff and lockout, idle re-lock, the audit trail.
* ``board``: the pure "last readings" board; ``settings``: pure config edits.
* ``view``: the real view over a running ``Agent``; ``serial_io``: the tty adapter (os/termios).
* ``cli``: ``edge-gateway console`` (``register``) and ``serve_console`` for the agent and the demo.

Nothing is imported here, so importing a pure module does not pull in the adapters.
"""
