"""Runners: the only processes that load and run tenants' models.

- ``wire``: the frames web and runner exchange (numeric arrays as raw buffers, everything
  else as JSON; neither side ever unpickles what the other sends);
- ``host``: the runner host (``python -m inference.runners.host``), a clean process holding no
  secrets that forks one or more runner processes per organization and hands each client
  connection to the runner of its organization;
- ``runner``: the loop a runner runs;
- ``client``: the web and worker side (imports Django).

Only ``client`` may import Django or ``platform_site``: the others run in the host and the
runners, which must hold nothing of the platform's configuration.
"""
