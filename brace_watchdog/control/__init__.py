"""The gated control socket: who may ask (``auth``), how they ask (``protocol``), what they may
ask (``commands``), how dangerous actions are approved (``approvals``) and the component that
serves it all (``server``, component name ``control``). The client is ``brace_watchdog.ctl``."""
