"""SystemdNotify parses the watchdog environment and sends well-formed notify messages."""

from __future__ import annotations

from brace_watchdog.systemd import SystemdNotify


class Recorder:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def notify(self, state: str) -> None:
        self.sent.append(state)


class Refusing(Recorder):
    """Fails like a full datagram queue for the next ``refuse`` messages."""

    def __init__(self, refuse: int) -> None:
        super().__init__()
        self.refuse = refuse

    def notify(self, state: str) -> None:
        if self.refuse > 0:
            self.refuse -= 1
            raise BlockingIOError(11, "Resource temporarily unavailable")
        super().notify(state)


def make(env: dict[str, str], pid: int = 42,
         recorder: Recorder | None = None) -> tuple[SystemdNotify, Recorder]:
    sender = recorder or Recorder()
    return SystemdNotify(env, pid=pid, sender_factory=lambda address: sender,
                         monotonic_usec=lambda: 123456), sender


def test_no_notify_socket_means_silent() -> None:
    notify, recorder = make({})
    notify.ready("x")
    notify.watchdog()
    assert not notify.enabled
    assert recorder.sent == []


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    notify, _ = make({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000"})
    assert notify.watchdog_interval == 15.0


def test_watchdog_for_another_pid_is_ignored() -> None:
    notify, _ = make({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "7"})
    assert notify.watchdog_interval is None


def test_bad_watchdog_usec_is_ignored() -> None:
    for value in ("", "0", "abc", "-5"):
        notify, _ = make({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": value})
        assert notify.watchdog_interval is None


def test_status_sent_only_on_change_and_flattened() -> None:
    notify, recorder = make({"NOTIFY_SOCKET": "/x"})
    notify.ready("starting")
    notify.status("a\nb")
    notify.status("a b")
    notify.status("x" * 500)
    assert recorder.sent[0].startswith("READY=1\nSTATUS=starting")
    assert recorder.sent[1] == "STATUS=a b"
    assert len(recorder.sent) == 3
    assert len(recorder.sent[2]) <= len("STATUS=") + 200


def test_stopping_and_reloading() -> None:
    notify, recorder = make({"NOTIFY_SOCKET": "/x"})
    notify.reloading()
    notify.stopping()
    assert recorder.sent == ["RELOADING=1\nMONOTONIC_USEC=123456", "STOPPING=1\nSTATUS=stopping"]


def test_a_lost_lifecycle_message_is_resent_before_the_next_one() -> None:
    notify, recorder = make({"NOTIFY_SOCKET": "/x"}, recorder=Refusing(refuse=2))
    notify.reloading()   # refused
    notify.ready("ok")   # refused too: supersedes the RELOADING=1 nobody saw
    notify.watchdog()    # delivers the pending READY=1 first
    notify.watchdog()
    assert recorder.sent == ["READY=1\nSTATUS=ok\nMAINPID=42", "WATCHDOG=1", "WATCHDOG=1"]


def test_lost_pings_and_status_are_not_resent() -> None:
    notify, recorder = make({"NOTIFY_SOCKET": "/x"}, recorder=Refusing(refuse=2))
    notify.watchdog()
    notify.status("a")
    notify.watchdog()
    assert recorder.sent == ["WATCHDOG=1"]
