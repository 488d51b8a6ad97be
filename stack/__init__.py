"""The local stack behind ``scripts/stack``: supervision, faults on purpose, and their servers.

Not part of the installed package (pyproject.toml installs ``exporter`` and ``workload``
only): it is the developer's tool that runs the whole system on one machine without Docker.

- :mod:`stack.ports` -- which ports are taken (a listener, not a TIME_WAIT);
- :mod:`stack.components` -- the command and environment of every component;
- :mod:`stack.supervisor` -- restarts with capped backoff, crash loops, faults' holds;
- :mod:`stack.alerting` -- the stack's own rules, Prometheus and Alertmanager configs;
- :mod:`stack.servers` -- in-process HTTP: Alertmanager's webhook, runbooks, sample images;
- :mod:`stack.faults` -- ``scripts/stack fault <name>``: what each fault does and shows;
- :mod:`stack.control` -- the control socket the ``fault`` and ``status`` commands talk to;
- :mod:`stack.console` -- the status line and the event lines above it.
"""
